//! What a scenario found, and how it is printed: answers counted by status
//! and error code, throughput and latency, each check, and the verdict.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::client::Outcome;
use super::timeline::Timeline;

/// One expectation and whether the service met it.
#[derive(Debug, Clone)]
pub struct Check {
    pub ok: bool,
    pub text: String,
}

impl Check {
    pub fn new(ok: bool, text: impl Into<String>) -> Check {
        Check {
            ok,
            text: text.into(),
        }
    }

    /// `what: got (expected expected)`, passing when they are equal.
    pub fn equal<T: PartialEq + std::fmt::Display>(what: &str, expected: T, got: T) -> Check {
        Check::new(
            expected == got,
            format!("{what}: {got} (expected {expected})"),
        )
    }
}

/// A scenario's result.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub title: String,
    /// What was set up and fired, one line.
    pub setup: String,
    pub outcomes: Vec<Outcome>,
    /// From the release of the claims to the last answer.
    pub wall: Duration,
    /// The answers over time, when claims were fired.
    pub timeline: Option<Timeline>,
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
}

impl Scenario {
    pub fn new(title: &str, setup: String) -> Scenario {
        Scenario {
            title: title.to_owned(),
            setup,
            outcomes: Vec::new(),
            wall: Duration::ZERO,
            timeline: None,
            checks: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.ok)
    }

    pub fn check(&mut self, check: Check) {
        self.checks.push(check);
    }

    pub fn requests_per_sec(&self) -> f64 {
        let secs = self.wall.as_secs_f64();
        if secs > 0.0 {
            self.outcomes.len() as f64 / secs
        } else {
            0.0
        }
    }

    /// p50 and p99 over every claim that was sent.
    pub fn latency(&self) -> Option<(Duration, Duration)> {
        match self.latency_percentiles(&[50.0, 99.0])[..] {
            [Some(p50), Some(p99)] => Some((p50, p99)),
            _ => None,
        }
    }

    /// The latency at each of the percentiles `ps` over every claim that
    /// was sent (`None`s when none was).
    pub fn latency_percentiles(&self, ps: &[f64]) -> Vec<Option<Duration>> {
        let mut sent: Vec<Duration> = self
            .outcomes
            .iter()
            .filter(|o| o.code != "not_sent_deadline")
            .map(|o| o.latency)
            .collect();
        sent.sort_unstable();
        ps.iter().map(|&p| percentile(&sent, p)).collect()
    }
}

/// Answers with this status and error code (`""` for none).
pub fn count(outcomes: &[Outcome], status: u16, code: &str) -> usize {
    outcomes
        .iter()
        .filter(|o| o.status == Some(status) && o.code == code)
        .count()
}

/// Answers with this status, whatever the code.
pub fn count_status(outcomes: &[Outcome], status: u16) -> usize {
    outcomes.iter().filter(|o| o.status == Some(status)).count()
}

/// Counts by (status, code); requests without an answer sort last.
pub fn tally(outcomes: &[Outcome]) -> BTreeMap<(u32, String), usize> {
    let mut counts = BTreeMap::new();
    for o in outcomes {
        let status = o.status.map_or(u32::MAX, u32::from);
        *counts.entry((status, o.code.clone())).or_insert(0) += 1;
    }
    counts
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub fn verdict(s: &Scenario) -> String {
    if s.passed() {
        format!("PASS  {}", s.title)
    } else if s.checks.is_empty() {
        format!("FAIL  {}: nothing could be checked", s.title)
    } else {
        let reasons: Vec<&str> = s
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.text.as_str())
            .collect();
        format!("FAIL  {}: {}", s.title, reasons.join("; "))
    }
}

/// The block printed after a scenario.
pub fn render(s: &Scenario) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "== {}", s.title);
    let _ = writeln!(out, "   {}", s.setup);
    for note in &s.notes {
        let _ = writeln!(out, "   note: {note}");
    }
    let retried = s.outcomes.iter().filter(|o| o.retries > 0).count();
    if retried > 0 {
        let retries: u32 = s.outcomes.iter().map(|o| o.retries).sum();
        let _ = writeln!(
            out,
            "   {retried} claims got no answer or a 503 and were sent again with their \
             idempotency key ({retries} retries in all)"
        );
    }
    if !s.outcomes.is_empty() {
        let _ = writeln!(out, "   {:<7} {:<28} {:>8}", "status", "code", "count");
        for ((status, code), n) in tally(&s.outcomes) {
            let status = if status == u32::MAX {
                "none".to_owned()
            } else {
                status.to_string()
            };
            let code = if code.is_empty() { "-" } else { code.as_str() };
            let _ = writeln!(out, "   {status:<7} {code:<28} {n:>8}");
        }
        let latency = match s.latency() {
            Some((p50, p99)) => format!("latency p50 {}, p99 {}", ms(p50), ms(p99)),
            None => "no latency: nothing was sent".to_owned(),
        };
        let _ = writeln!(
            out,
            "   {} claims in {:.3} s: {:.0} req/s, {latency}",
            s.outcomes.len(),
            s.wall.as_secs_f64(),
            s.requests_per_sec()
        );
    }
    for check in &s.checks {
        let mark = if check.ok { "[ok]  " } else { "[FAIL]" };
        let _ = writeln!(out, "   {mark} {}", check.text);
    }
    let _ = writeln!(out, "{}", verdict(s));
    out
}

/// The closing table over every scenario, and the overall result.
pub fn render_summary(scenarios: &[Scenario]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "== Summary");
    let _ = writeln!(
        out,
        "   {:<20} {:>8} {:>6} {:>6} {:>6} {:>6} {:>9} {:>10} {:>10}  result",
        "scenario", "claims", "2xx", "400", "409", "other", "req/s", "p50", "p99"
    );
    for s in scenarios {
        let ok = s
            .outcomes
            .iter()
            .filter(|o| o.status.is_some_and(|c| (200..300).contains(&c)));
        let ok = ok.count();
        let c400 = count_status(&s.outcomes, 400);
        let c409 = count_status(&s.outcomes, 409);
        let other = s.outcomes.len() - ok - c400 - c409;
        let (p50, p99) = s
            .latency()
            .map_or(("-".to_owned(), "-".to_owned()), |(a, b)| (ms(a), ms(b)));
        let _ = writeln!(
            out,
            "   {:<20} {:>8} {:>6} {:>6} {:>6} {:>6} {:>9.0} {:>10} {:>10}  {}",
            s.title,
            s.outcomes.len(),
            ok,
            c400,
            c409,
            other,
            s.requests_per_sec(),
            p50,
            p99,
            if s.passed() { "PASS" } else { "FAIL" }
        );
    }
    let failed = scenarios.iter().filter(|s| !s.passed()).count();
    if failed == 0 {
        let _ = writeln!(
            out,
            "RESULT: PASS ({} of {} scenarios passed)",
            scenarios.len(),
            scenarios.len()
        );
    } else {
        let _ = writeln!(
            out,
            "RESULT: FAIL ({failed} of {} scenarios failed)",
            scenarios.len()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: Option<u16>, code: &str, millis: u64) -> Outcome {
        Outcome {
            status,
            code: code.to_owned(),
            latency: Duration::from_millis(millis),
            retries: 0,
        }
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&sorted, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(
            percentile(&sorted[..1], 99.0),
            Some(Duration::from_millis(1))
        );
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn a_scenario_passes_only_when_every_check_passes() {
        let mut s = Scenario::new("X", "setup".into());
        assert!(!s.passed(), "no checks is not a pass");
        s.check(Check::equal("200 answers", 1, 1));
        assert!(s.passed());
        s.check(Check::equal("409 answers", 9, 8));
        assert!(!s.passed());
        let text = render(&s);
        assert!(
            text.contains("[FAIL] 409 answers: 8 (expected 9)"),
            "{text}"
        );
        assert!(
            text.ends_with("FAIL  X: 409 answers: 8 (expected 9)\n"),
            "{text}"
        );
    }

    #[test]
    fn the_table_counts_by_status_and_code_with_no_answer_last() {
        let mut s = Scenario::new("X", "setup".into());
        s.outcomes = vec![
            outcome(None, "timeout", 30_000),
            outcome(Some(400), "out_of_stock", 2),
            outcome(Some(200), "", 1),
            outcome(Some(400), "out_of_stock", 3),
        ];
        s.wall = Duration::from_secs(2);
        s.check(Check::new(true, "fine"));
        let text = render(&s);
        let rows: Vec<String> = text
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        let at = |row: &str| rows.iter().position(|r| r == row).expect(row);
        assert!(at("200 - 1") < at("400 out_of_stock 2"));
        assert!(at("400 out_of_stock 2") < at("none timeout 1"));
        assert!(text.contains("4 claims in 2.000 s: 2 req/s"), "{text}");
        let summary = render_summary(&[s]);
        assert!(summary.contains("RESULT: PASS (1 of 1 scenarios passed)"));
    }
}
