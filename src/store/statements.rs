//! The statements the store runs on its pooled connections, parsed once
//! when a connection opens (see `manager`), so that a request never pays
//! for a parse round trip. The SQL of every query on a pooled connection is
//! here; what a transaction does with it is in `claim`, `coupons` and
//! `release`.

use postgres::Statement;

/// One connection's prepared statements, which belong to it. Plans are made
/// per execution (see plan_cache_mode in `session`). Their columns
/// are read by name: an expression has an alias.
pub(crate) struct Statements {
    pub insert_coupon: Statement,
    pub coupon_counts: Statement,
    pub lock_coupon: Statement,
    pub holders_among: Statement,
    pub insert_new_claims: Statement,
    pub take_stock: Statement,
    pub sold_out_holders: Statement,
    pub holds: Statement,
    pub claims_page: Statement,
    pub coupons_page: Statement,
    pub claim_lock: Statement,
    pub claim_one: Statement,
    pub claim_batch: Statement,
    pub remove_claim: Statement,
    pub give_back_stock: Statement,
    pub record_release: Statement,
    pub recorded_keys: Statement,
    pub record_keys: Statement,
    pub reserve_keys: Statement,
    pub settle_keys: Statement,
    pub sweep_keys: Statement,
}

impl Statements {
    pub(super) fn prepare(client: &mut postgres::Client) -> Result<Statements, postgres::Error> {
        Ok(Statements {
            insert_coupon: client.prepare(
                "INSERT INTO coupons (name, amount, remaining_amount, starts_at, expires_at) \
                 VALUES ($1, $2, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
            )?,
            coupon_counts: client.prepare(
                "SELECT amount, remaining_amount, starts_at, expires_at FROM coupons WHERE name = $1",
            )?,
            // NO KEY UPDATE: the claim rows' foreign key takes KEY SHARE on
            // this row, which this lock must not block.
            // now() is the transaction's start on the database clock: the
            // one clock every server on this database agrees on.
            lock_coupon: client.prepare(
                "SELECT remaining_amount, starts_at, expires_at, now() AS now FROM coupons \
                 WHERE name = $1 FOR NO KEY UPDATE",
            )?,
            holders_among: client.prepare(
                "SELECT user_id FROM claims WHERE coupon_name = $1 AND user_id = ANY($2)",
            )?,
            // WITH ORDINALITY keeps the identity column in arrival order,
            // which is the order claimed_by reports. Users who already hold
            // the coupon are skipped by the unique key and not returned.
            insert_new_claims: client.prepare(
                "INSERT INTO claims (user_id, coupon_name) \
                 SELECT u, $1 FROM unnest($2::text[]) WITH ORDINALITY AS t(u, n) ORDER BY n \
                 ON CONFLICT (coupon_name, user_id) DO NOTHING RETURNING user_id",
            )?,
            take_stock: client.prepare(
                "UPDATE coupons SET remaining_amount = remaining_amount - $2 WHERE name = $1",
            )?,
            // Whether the coupon is sold out (and has no sale window), and
            // up to $2 of its holders in claim order: one statement, so both
            // come from one snapshot (see `SoldOut::learn`).
            sold_out_holders: client.prepare(
                "SELECT c.remaining_amount = 0 AND c.starts_at IS NULL AND c.expires_at IS NULL \
                 AS sold_out, \
                 ARRAY(SELECT user_id FROM claims WHERE coupon_name = $1 ORDER BY id LIMIT $2) \
                 AS holders \
                 FROM coupons c WHERE c.name = $1",
            )?,
            holds: client
                .prepare("SELECT 1 FROM claims WHERE coupon_name = $1 AND user_id = $2")?,
            claims_page: client.prepare(
                "SELECT id, user_id, claimed_at FROM claims \
                 WHERE coupon_name = $1 AND id > $2 ORDER BY id LIMIT $3",
            )?,
            coupons_page: client.prepare(
                "SELECT name, amount, remaining_amount, starts_at, expires_at FROM coupons \
                 WHERE name > $1 ORDER BY name LIMIT $2",
            )?,
            // A session-level lock, taken before a claim transaction begins
            // and released after it ends (see `Store::claim_batch`); true
            // when it had to be waited for. CASE evaluates the blocking lock
            // only when the try failed, so the lock is taken once.
            claim_lock: client.prepare(
                "SELECT CASE WHEN pg_try_advisory_lock($1) THEN false \
                 ELSE pg_advisory_lock($1)::text IS NOT NULL END AS waited",
            )?,
            // A claim alone on its coupon, decided and recorded by one call
            // (see `Store::claim_one`): run alone, it is a transaction of
            // its own, at the pooled session's defaults (see `session`).
            // With an idempotency key and its request ($4, $5; NULL without
            // one), and the keys' time to live in hours ($6).
            claim_one: client.prepare(
                "SELECT outcome, remaining, windowed \
                 FROM flash_coupons_claim_one($1, $2, $3, $4, $5, $6)",
            )?,
            // A batch in one statement (see `Store::claim_batch`): with the
            // claims' idempotency keys and requests ($4, $5; NULL without
            // any), and the keys' time to live in hours ($6).
            claim_batch: client.prepare(
                "SELECT outcome, stock, windowed, holders, granted \
                 FROM flash_coupons_claim_batch($1, $2, $3, $4, $5, $6)",
            )?,
            // A release (see `Store::release_claim`): the claim row goes,
            // its unit comes back (never above the amount, whatever was
            // done to the row behind the service's back), and the claim is
            // kept in the history with the time it was given back.
            remove_claim: client.prepare(
                "DELETE FROM claims WHERE coupon_name = $1 AND user_id = $2 RETURNING claimed_at",
            )?,
            give_back_stock: client.prepare(
                "UPDATE coupons SET remaining_amount = LEAST(remaining_amount + 1, amount) \
                 WHERE name = $1 RETURNING remaining_amount",
            )?,
            record_release: client.prepare(
                "INSERT INTO claim_releases (coupon_name, user_id, claimed_at) VALUES ($1, $2, $3)",
            )?,
            // Idempotency keys (see `idempotency`): the live ones among $2
            // for operation $1, keys living $3 hours.
            recorded_keys: client.prepare(
                "SELECT key, request, remaining_amount FROM idempotency_keys \
                 WHERE operation = $1 AND key = ANY($2) \
                 AND created_at >= now() - make_interval(hours => $3)",
            )?,
            record_keys: client
                .prepare("SELECT flash_coupons_record_keys($1, $2, $3, $4, $5, $6)")?,
            // A row's place (tid) goes out and comes back as text, which
            // the client library can carry.
            reserve_keys: client.prepare(
                "SELECT reserved_key, slot::text AS slot, recorded_request, recorded_remaining \
                 FROM flash_coupons_reserve_keys($1, $2, $3, $4)",
            )?,
            settle_keys: client
                .prepare("SELECT flash_coupons_settle_keys($1::text[]::tid[], $2, $3)")?,
            // Up to $2 keys expired after $1 hours, skipping rows another
            // transaction holds, oldest first.
            sweep_keys: client.prepare(
                "DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY( \
                 SELECT ctid FROM idempotency_keys \
                 WHERE created_at < now() - make_interval(hours => $1) \
                 ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED))",
            )?,
        })
    }
}
