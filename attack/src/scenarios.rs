//! The scenarios: each creates a fresh coupon, fires its claims, reads the
//! coupon back and checks every number the spec fixes.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use super::client::{Client, Outcome};
use super::load;
use super::report::{Check, Scenario, count, count_status};

const FLASH_STOCK: u32 = 5;
const FLASH_USERS: usize = 50;
const DIP_STOCK: u32 = 10;
const DIP_CLAIMS: usize = 10;

/// Distinguishes this run's coupons from every earlier run's: milliseconds
/// since the epoch and a random suffix.
pub fn run_id() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{millis}-{:06x}", fastrand::u32(..0x100_0000))
}

fn coupon_name(kind: &str, run_id: &str) -> String {
    format!("attack-{kind}-{run_id}")
}

/// 50 distinct users claim a 5-unit coupon at the same moment: exactly 5
/// win, 45 get `out_of_stock`, and the coupon lists exactly the winners.
pub fn flash_sale(client: &Client, run_id: &str) -> Scenario {
    let name = coupon_name("flash", run_id);
    let mut s = Scenario::new(
        "Flash Sale Attack",
        format!("coupon {name}: {FLASH_STOCK} units; {FLASH_USERS} distinct users claim at once"),
    );
    let users: Vec<String> = (0..FLASH_USERS).map(|i| format!("user_{i}")).collect();
    if !create(client, &mut s, &name, FLASH_STOCK) {
        return s;
    }
    if !fire(&mut s, "flash sale", FLASH_USERS, FLASH_USERS, |i| {
        client.claim(&users[i], &name)
    }) {
        return s;
    }
    check_sell_out(client, &mut s, &name, &users, FLASH_STOCK);
    s
}

/// One user claims a 10-unit coupon 10 times at the same moment: one 200,
/// nine `already_claimed`, one holder and 9 units left.
pub fn double_dip(client: &Client, run_id: &str) -> Scenario {
    let name = coupon_name("dip", run_id);
    let user = "the_same_user".to_owned();
    let mut s = Scenario::new(
        "Double Dip Attack",
        format!("coupon {name}: {DIP_STOCK} units; user {user} claims {DIP_CLAIMS} times at once"),
    );
    if !create(client, &mut s, &name, DIP_STOCK) {
        return s;
    }
    if !fire(&mut s, "double dip", DIP_CLAIMS, DIP_CLAIMS, |_| {
        client.claim(&user, &name)
    }) {
        return s;
    }
    s.check(Check::equal(
        "200 answers",
        1,
        count_status(&s.outcomes, 200),
    ));
    s.check(Check::equal(
        "409 already_claimed answers",
        DIP_CLAIMS - 1,
        count(&s.outcomes, 409, "already_claimed"),
    ));
    let users = vec![user; DIP_CLAIMS];
    let winners = winners(&s, &users);
    check_coupon(client, &mut s, &name, u64::from(DIP_STOCK) - 1, 1, &winners);
    s
}

/// `users` distinct users claim a `stock`-unit coupon through `concurrency`
/// workers: exactly min(users, stock) win, the rest get `out_of_stock`.
pub fn burst(
    client: &Client,
    run_id: &str,
    users: usize,
    stock: u32,
    concurrency: usize,
) -> Scenario {
    let name = coupon_name("burst", run_id);
    let mut s = Scenario::new(
        "Burst",
        format!(
            "coupon {name}: {stock} units; {users} distinct users claim through {concurrency} workers"
        ),
    );
    if !create(client, &mut s, &name, stock) {
        return s;
    }
    let ids: Vec<String> = (0..users).map(|i| format!("user_{i}")).collect();
    if !fire(&mut s, "burst", users, concurrency, |i| {
        client.claim(&ids[i], &name)
    }) {
        return s;
    }
    check_sell_out(client, &mut s, &name, &ids, stock);
    s
}

/// Distinct users claimed `stock` units: the first min(users, stock) get
/// 200, the rest 400 out_of_stock, and the coupon shows exactly the winners.
fn check_sell_out(client: &Client, s: &mut Scenario, name: &str, users: &[String], stock: u32) {
    let won = users.len().min(stock as usize);
    s.check(Check::equal(
        "200 answers",
        won,
        count_status(&s.outcomes, 200),
    ));
    s.check(Check::equal(
        "400 out_of_stock answers",
        users.len() - won,
        count(&s.outcomes, 400, "out_of_stock"),
    ));
    let winners = winners(s, users);
    check_coupon(
        client,
        s,
        name,
        u64::from(stock) - won as u64,
        won,
        &winners,
    );
}

fn create(client: &Client, s: &mut Scenario, name: &str, amount: u32) -> bool {
    let reply = client.create(name, amount);
    let ok = reply.status == Some(201);
    let expected = match reply.status {
        Some(201) => "",
        Some(401 | 403) => " (expected HTTP 201; is ADMIN_TOKEN set to the service's token?)",
        _ => " (expected HTTP 201)",
    };
    s.check(Check::new(
        ok,
        format!("create coupon: {}{expected}", reply.describe()),
    ));
    ok
}

/// Fires `jobs` claims on `workers` threads released together (a thread
/// per claim for the attacks) and keeps the answers in `s`. False when
/// none could be sent; a deadline that stopped some is a failed check.
fn fire(
    s: &mut Scenario,
    label: &str,
    jobs: usize,
    workers: usize,
    job: impl Fn(usize) -> Outcome + Sync,
) -> bool {
    match load::fire(label, jobs, workers, job) {
        Ok(volley) => {
            if volley.workers < workers.min(jobs) {
                s.notes.push(format!(
                    "only {} of {} worker threads could be started",
                    volley.workers,
                    workers.min(jobs)
                ));
            }
            s.outcomes = volley.outcomes;
            s.wall = volley.wall;
            s.timeline = Some(volley.timeline);
            let unsent = count_code(s, "not_sent_deadline");
            if unsent > 0 {
                s.check(Check::new(
                    false,
                    format!("run deadline reached: {unsent} claims not sent"),
                ));
            }
            true
        }
        Err(err) => {
            s.check(Check::new(false, format!("claims not sent: {err}")));
            false
        }
    }
}

fn count_code(s: &Scenario, code: &str) -> usize {
    s.outcomes.iter().filter(|o| o.code == code).count()
}

/// The users whose claim was answered 200; `users[i]` sent claim `i`.
fn winners<'a>(s: &Scenario, users: &'a [String]) -> BTreeSet<&'a str> {
    s.outcomes
        .iter()
        .zip(users)
        .filter(|(o, _)| o.status == Some(200))
        .map(|(_, u)| u.as_str())
        .collect()
}

/// Reads the coupon back: its remaining stock, and that `claimed_by` holds
/// each of `holders` users once and is exactly the users answered 200.
fn check_coupon(
    client: &Client,
    s: &mut Scenario,
    name: &str,
    remaining: u64,
    holders: usize,
    winners: &BTreeSet<&str>,
) {
    let reply = client.get_coupon(name);
    if reply.status != Some(200) {
        s.check(Check::new(
            false,
            format!("read coupon: {} (expected HTTP 200)", reply.describe()),
        ));
        return;
    }
    s.check(Check::equal(
        "remaining_amount",
        remaining.to_string(),
        reply.body["remaining_amount"].to_string(),
    ));
    let Some(listed) = reply.body["claimed_by"].as_array() else {
        s.check(Check::new(false, "claimed_by: missing or not a list"));
        return;
    };
    let listed: Vec<&str> = listed.iter().filter_map(|v| v.as_str()).collect();
    let distinct: BTreeSet<&str> = listed.iter().copied().collect();
    s.check(Check::equal(
        "claimed_by distinct users",
        holders,
        distinct.len(),
    ));
    if distinct.len() != listed.len() {
        s.check(Check::new(
            false,
            format!(
                "claimed_by lists {} entries for {} users",
                listed.len(),
                distinct.len()
            ),
        ));
    }
    s.check(same_users(&distinct, winners));
}

fn same_users(listed: &BTreeSet<&str>, winners: &BTreeSet<&str>) -> Check {
    if listed == winners {
        return Check::new(true, "claimed_by is exactly the users answered 200");
    }
    let sample = |users: Vec<&&str>| {
        let shown: Vec<&str> = users.iter().take(5).map(|u| **u).collect();
        let more = users.len().saturating_sub(shown.len());
        if more > 0 {
            format!("{} and {more} more", shown.join(", "))
        } else {
            shown.join(", ")
        }
    };
    let extra: Vec<&&str> = listed.difference(winners).collect();
    let missing: Vec<&&str> = winners.difference(listed).collect();
    let mut parts = Vec::new();
    if !extra.is_empty() {
        parts.push(format!("listed but not answered 200: {}", sample(extra)));
    }
    if !missing.is_empty() {
        parts.push(format!("answered 200 but not listed: {}", sample(missing)));
    }
    Check::new(
        false,
        format!(
            "claimed_by is not the users answered 200 ({})",
            parts.join("; ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coupon_names_differ_between_runs_and_are_valid_names() {
        let a = coupon_name("flash", &run_id());
        let b = coupon_name("flash", &run_id());
        assert_ne!(a, b);
        assert!(a.len() <= 128);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }

    #[test]
    fn differing_holders_are_named() {
        let listed: BTreeSet<&str> = ["a", "b"].into();
        let winners: BTreeSet<&str> = ["b", "c"].into();
        let check = same_users(&listed, &winners);
        assert!(!check.ok);
        assert!(
            check.text.contains("listed but not answered 200: a"),
            "{}",
            check.text
        );
        assert!(
            check.text.contains("answered 200 but not listed: c"),
            "{}",
            check.text
        );
    }
}
