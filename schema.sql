-- Applied by a server at start when the database records an older version
-- of this file (see the end of it, and `store::schema`), and mountable into
-- the postgres image's initdb directory: every statement must be safe to run
-- again, over any earlier version.

CREATE TABLE IF NOT EXISTS coupons (
    name             TEXT        PRIMARY KEY,
    amount           INTEGER     NOT NULL,
    remaining_amount INTEGER     NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT coupons_amount_non_negative CHECK (amount >= 0),
    CONSTRAINT coupons_remaining_within_amount CHECK (remaining_amount BETWEEN 0 AND amount)
);

CREATE TABLE IF NOT EXISTS claims (
    id          BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     TEXT        NOT NULL,
    coupon_name TEXT        NOT NULL REFERENCES coupons (name),
    claimed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The rule the whole service leans on: one claim per user per coupon,
    -- enforced by the database whatever the application does. Keyed coupon
    -- first, so that one coupon's claims sit together in the index: claim
    -- transactions on different coupons then rarely share an index page,
    -- which SERIALIZABLE would count as a conflict.
    CONSTRAINT claims_user_coupon_unique UNIQUE (coupon_name, user_id)
);

-- Claim order per coupon, for claimed_by and the claim pages: the unique
-- index above leads with coupon_name too, but then orders by user_id, not
-- by claim order.
CREATE INDEX IF NOT EXISTS claims_coupon_order ON claims (coupon_name, id);

-- Sale windows (optional): claims before starts_at or from expires_at on are
-- refused. Added after the first release, hence ALTER ... IF NOT EXISTS.
ALTER TABLE coupons ADD COLUMN IF NOT EXISTS starts_at TIMESTAMPTZ;
ALTER TABLE coupons ADD COLUMN IF NOT EXISTS expires_at TIMESTAMPTZ;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'coupons_window_ordered') THEN
        ALTER TABLE coupons ADD CONSTRAINT coupons_window_ordered
            CHECK (starts_at IS NULL OR expires_at IS NULL OR expires_at > starts_at);
    END IF;
END
$$;

-- Released claims (DELETE /api/coupons/{name}/claims/{user_id}): the claim
-- row leaves `claims` and is kept here, with when it was claimed and when
-- it was given back. No foreign key: history outlives its coupon, and
-- `TRUNCATE claims, coupons` must keep working.
CREATE TABLE IF NOT EXISTS claim_releases (
    id          BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    coupon_name TEXT        NOT NULL,
    user_id     TEXT        NOT NULL,
    claimed_at  TIMESTAMPTZ NOT NULL,
    released_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS claim_releases_coupon_order ON claim_releases (coupon_name, id);

-- Freshness of what servers remember about sold-out coupons (the design:
-- docs/architecture.md, "Keeping the memory fresh"). The payload is the
-- coupon's name, or '' (never a valid name) for "everything". Nothing the
-- claim path does notifies: its UPDATE only lowers remaining_amount, which
-- the WHEN below skips, and inserting claims has no trigger.
CREATE OR REPLACE FUNCTION flash_coupons_notify_stock(names TEXT[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    one TEXT;
BEGIN
    -- Many coupons at once (a bulk load or delete), or a name too long
    -- for a payload (never one the service accepts): everything.
    IF cardinality(names) > 100 OR EXISTS (
        SELECT 1 FROM unnest(names) AS n WHERE octet_length(n) > 1000
    ) THEN
        PERFORM pg_notify('flash_coupons_stock', '');
        RETURN;
    END IF;
    FOREACH one IN ARRAY names LOOP
        PERFORM pg_notify('flash_coupons_stock', one);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION flash_coupons_coupons_added() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM flash_coupons_notify_stock(ARRAY(SELECT name FROM born));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION flash_coupons_coupons_removed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM flash_coupons_notify_stock(ARRAY(SELECT name FROM gone));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION flash_coupons_coupon_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM flash_coupons_notify_stock(ARRAY[OLD.name, NEW.name]);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION flash_coupons_claims_removed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM flash_coupons_notify_stock(ARRAY(SELECT DISTINCT coupon_name FROM gone));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION flash_coupons_claims_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM flash_coupons_notify_stock(ARRAY(
        SELECT coupon_name FROM gone UNION SELECT coupon_name FROM moved
    ));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION flash_coupons_everything_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('flash_coupons_stock', '');
    RETURN NULL;
END
$$;

-- Created once (CREATE OR REPLACE TRIGGER needs PostgreSQL 14; and a server
-- starting beside running ones should not lock the tables every time).
DO $$
BEGIN
    -- Once per statement, with the rows it touched: a bulk load or delete
    -- costs one notification per coupon (or one in all), not a call per row.
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'coupons'::regclass AND tgname = 'coupons_added') THEN
        CREATE TRIGGER coupons_added AFTER INSERT ON coupons
            REFERENCING NEW TABLE AS born
            FOR EACH STATEMENT EXECUTE FUNCTION flash_coupons_coupons_added();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'coupons'::regclass AND tgname = 'coupons_removed') THEN
        CREATE TRIGGER coupons_removed AFTER DELETE ON coupons
            REFERENCING OLD TABLE AS gone
            FOR EACH STATEMENT EXECUTE FUNCTION flash_coupons_coupons_removed();
    END IF;
    -- Per row, and never for the claim path's decrement: only stock rising,
    -- or a change of name, amount or sale window.
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'coupons'::regclass AND tgname = 'coupons_stock_raised') THEN
        CREATE TRIGGER coupons_stock_raised AFTER UPDATE ON coupons
            FOR EACH ROW
            WHEN (NEW.remaining_amount > OLD.remaining_amount
                  OR NEW.amount IS DISTINCT FROM OLD.amount
                  OR NEW.name IS DISTINCT FROM OLD.name
                  OR NEW.starts_at IS DISTINCT FROM OLD.starts_at
                  OR NEW.expires_at IS DISTINCT FROM OLD.expires_at)
            EXECUTE FUNCTION flash_coupons_coupon_changed();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'coupons'::regclass AND tgname = 'coupons_truncated') THEN
        CREATE TRIGGER coupons_truncated AFTER TRUNCATE ON coupons
            FOR EACH STATEMENT EXECUTE FUNCTION flash_coupons_everything_changed();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'claims'::regclass AND tgname = 'claims_removed') THEN
        CREATE TRIGGER claims_removed AFTER DELETE ON claims
            REFERENCING OLD TABLE AS gone
            FOR EACH STATEMENT EXECUTE FUNCTION flash_coupons_claims_removed();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'claims'::regclass AND tgname = 'claims_changed') THEN
        CREATE TRIGGER claims_changed AFTER UPDATE ON claims
            REFERENCING OLD TABLE AS gone NEW TABLE AS moved
            FOR EACH STATEMENT EXECUTE FUNCTION flash_coupons_claims_changed();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = 'claims'::regclass AND tgname = 'claims_truncated') THEN
        CREATE TRIGGER claims_truncated AFTER TRUNCATE ON claims
            FOR EACH STATEMENT EXECUTE FUNCTION flash_coupons_everything_changed();
    END IF;
END
$$;

-- A batch of claims on one coupon decided and recorded in one statement:
-- the batch path's statements (claim lock, BEGIN, row lock, inserts,
-- stock, keys, COMMIT and unlock) in one round trip, which on a hot coupon
-- is most of what a batch costs the database and the server. The caller
-- runs it as its own SERIALIZABLE transaction, and decides each claim
-- itself from what it returns, with the rules of `decide_in_order` (in
-- order; a holder or a user seen earlier in the batch is already_claimed;
-- units to the others until none is left): the stock before the batch, and
-- the holders among the claimants. The distinct users are tried in order,
-- as many at a time as units are left, each inserted or turned away by the
-- unique key (no read of the key, so no predicate lock on its index
-- pages); only the users left untried when the stock ran out are looked
-- up. Inserted are exactly the users granted.
--
-- Idempotency keys (`idem_keys`, parallel to `claimants`, NULL where a
-- claim has none, or NULL for none at all; no key twice) with their
-- requests (`fingerprints`) are recorded after the claims are decided, as
-- the batch path's keys are reserved (flash_coupons_reserve_keys says
-- why): inserted and the unique key asked. A granted claim's key goes in
-- with its answer (the stock before the batch less the claim's place among
-- those granted); the others' keys go in only to ask the unique key and
-- are removed again. A key with a live record means its claim must be
-- answered from the record and not decided: the statement then fails to
-- serialize, undoing everything, and the caller takes the batch path,
-- which reserves keys before deciding. So a retried keyed claim costs a
-- batch one wasted round trip, and every other batch saves the keys'
-- second write.
--
-- The claim lock is only tried, as flash_coupons_claim_one does: 'busy'
-- when another session holds it, and the caller then takes the batch path,
-- which waits for the lock before its snapshot. Outcomes: 'busy',
-- 'coupon_not_found', 'not_started', 'expired' (for every claim), or
-- 'decided'; with the stock before the batch (NULL without a coupon or
-- when busy), whether the coupon has a sale window, the holders, and how
-- many were granted.
CREATE OR REPLACE FUNCTION flash_coupons_claim_batch(
    coupon TEXT, claimants TEXT[], lock_key BIGINT, idem_keys TEXT[], fingerprints TEXT[],
    ttl_hours INTEGER)
RETURNS TABLE (outcome TEXT, stock INTEGER, windowed BOOLEAN, holders TEXT[], granted INTEGER)
LANGUAGE plpgsql AS $$
DECLARE
    starts   TIMESTAMPTZ;
    expires  TIMESTAMPTZ;
    users    TEXT[];
    next     TEXT[];
    inserted TEXT[];
    winners  TEXT[] := '{}';
    tried    INTEGER := 0;
    keyed    INTEGER := coalesce(cardinality(array_remove(idem_keys, NULL)), 0);
    recorded INTEGER;
    slots    TID[];
BEGIN
    holders := '{}';
    granted := 0;
    windowed := false;
    IF NOT pg_try_advisory_xact_lock(lock_key) THEN
        outcome := 'busy';
        RETURN NEXT;
        RETURN;
    END IF;
    -- NO KEY UPDATE, as the batch path: the new claim rows' foreign key
    -- takes KEY SHARE on this row, which this lock must not block.
    SELECT c.remaining_amount, c.starts_at, c.expires_at INTO stock, starts, expires
        FROM coupons c WHERE c.name = coupon FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        outcome := 'coupon_not_found';
    ELSE
        windowed := starts IS NOT NULL OR expires IS NOT NULL;
        IF starts IS NOT NULL AND now() < starts THEN
            outcome := 'not_started';
        ELSIF expires IS NOT NULL AND now() >= expires THEN
            outcome := 'expired';
        ELSE
            outcome := 'decided';
        END IF;
    END IF;
    IF outcome = 'decided' THEN
        SELECT coalesce(array_agg(d.u ORDER BY d.first), '{}') INTO users
            FROM (SELECT t.u, min(t.n) AS first
                  FROM unnest(claimants) WITH ORDINALITY AS t(u, n) GROUP BY t.u) d;
        WHILE granted < stock AND tried < cardinality(users) LOOP
            next := users[tried + 1 : tried + (stock - granted)];
            tried := tried + cardinality(next);
            -- WITH ORDINALITY keeps the identity column in arrival order,
            -- which is the order claimed_by reports.
            WITH added AS (
                INSERT INTO claims (user_id, coupon_name)
                    SELECT t.u, coupon FROM unnest(next) WITH ORDINALITY AS t(u, n) ORDER BY t.n
                    ON CONFLICT (coupon_name, user_id) DO NOTHING
                RETURNING user_id)
            SELECT coalesce(array_agg(a.user_id), '{}') INTO inserted FROM added a;
            granted := granted + cardinality(inserted);
            winners := winners || inserted;
            holders := holders || ARRAY(SELECT t.u FROM unnest(next) AS t(u)
                                        WHERE NOT t.u = ANY (inserted));
        END LOOP;
        IF tried < cardinality(users) THEN
            holders := holders || ARRAY(SELECT c.user_id FROM claims c
                                        WHERE c.coupon_name = coupon
                                        AND c.user_id = ANY (users[tried + 1 :]));
        END IF;
        IF granted > 0 THEN
            UPDATE coupons SET remaining_amount = remaining_amount - granted WHERE name = coupon;
        END IF;
    END IF;
    IF keyed > 0 THEN
        -- A claim is granted when it is its user's first in the batch and
        -- the user was inserted; the units go in order of the claims.
        WITH placed AS (
            SELECT t.key, t.request, t.n,
                   t.n = min(t.n) OVER (PARTITION BY t.u) AND t.u = ANY (winners) AS won
            FROM unnest(claimants, idem_keys, fingerprints) WITH ORDINALITY
                AS t(u, key, request, n)),
        answered AS (
            SELECT p.key, p.request, p.won,
                   stock - count(*) FILTER (WHERE p.won) OVER (ORDER BY p.n) AS left_after
            FROM placed p),
        taken AS (
            INSERT INTO idempotency_keys AS k (operation, key, request, status, remaining_amount)
                SELECT 'claim', a.key, a.request,
                       CASE WHEN a.won THEN 200 ELSE 0 END,
                       CASE WHEN a.won THEN a.left_after END
                FROM answered a WHERE a.key IS NOT NULL
                ON CONFLICT (operation, key) DO UPDATE
                SET request = EXCLUDED.request, status = EXCLUDED.status,
                    remaining_amount = EXCLUDED.remaining_amount, created_at = now()
                WHERE k.created_at < now() - make_interval(hours => ttl_hours)
            RETURNING k.ctid, k.status)
        SELECT count(*), coalesce(array_agg(t.ctid) FILTER (WHERE t.status = 0), '{}')
            INTO recorded, slots FROM taken t;
        IF recorded < keyed THEN
            RAISE EXCEPTION 'an idempotency key of the batch has a record: the batch path answers it'
                USING ERRCODE = 'serialization_failure';
        END IF;
        IF cardinality(slots) > 0 THEN
            DELETE FROM idempotency_keys k WHERE k.ctid = ANY (slots);
        END IF;
    END IF;
    RETURN NEXT;
END
$$;

-- The batch function as servers of the previous version call it, during a
-- rolling upgrade: without keys.
CREATE OR REPLACE FUNCTION flash_coupons_claim_batch(
    coupon TEXT, claimants TEXT[], lock_key BIGINT)
RETURNS TABLE (outcome TEXT, stock INTEGER, windowed BOOLEAN, holders TEXT[], granted INTEGER)
LANGUAGE sql AS $$
    SELECT b.outcome, b.stock, b.windowed, b.holders, b.granted
    FROM flash_coupons_claim_batch(coupon, claimants, lock_key, NULL, NULL, 0) b
$$;

-- Idempotency keys (the Idempotency-Key header of claims, creates and
-- releases): a key is recorded, with what its request asked for and what it
-- was answered, in the same transaction as the answer's effect, so a key is
-- here exactly when its effect committed. `request` is the request's
-- fingerprint (its parsed fields), `remaining_amount` the stock in a claim's
-- or a release's answer. A row older than IDEMPOTENCY_TTL_HOURS no longer
-- counts, and the service deletes it in small batches (created_at's index).
CREATE TABLE IF NOT EXISTS idempotency_keys (
    operation        TEXT        NOT NULL,
    key              TEXT        NOT NULL,
    request          TEXT        NOT NULL,
    status           SMALLINT    NOT NULL,
    remaining_amount INTEGER,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (operation, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (created_at);

-- Records keys with their requests and answers (one answer status for all;
-- a stock per key, or NULL). A row older than ttl_hours is taken over. A
-- live row this transaction could not see (another transaction recorded the
-- key since this one's snapshot) fails the statement to serialize: the
-- caller runs its transaction again, and then finds the key.
CREATE OR REPLACE FUNCTION flash_coupons_record_keys(
    op TEXT, keys TEXT[], requests TEXT[], answer_status SMALLINT, remainings INTEGER[],
    ttl_hours INTEGER)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    recorded INTEGER;
BEGIN
    INSERT INTO idempotency_keys AS k (operation, key, request, status, remaining_amount)
        SELECT op, t.key, t.request, answer_status, t.remaining
        FROM unnest(keys, requests, remainings) AS t(key, request, remaining)
        ON CONFLICT (operation, key) DO UPDATE
        SET request = EXCLUDED.request, status = EXCLUDED.status,
            remaining_amount = EXCLUDED.remaining_amount, created_at = now()
        WHERE k.created_at < now() - make_interval(hours => ttl_hours);
    GET DIAGNOSTICS recorded = ROW_COUNT;
    IF recorded < cardinality(keys) THEN
        RAISE EXCEPTION 'an idempotency key was recorded by another transaction meanwhile'
            USING ERRCODE = 'serialization_failure';
    END IF;
END
$$;

-- Reserving idempotency keys, for a claim transaction that records the
-- ones whose claims are granted. Each key is inserted first, as a
-- placeholder (status 0, never committed as such: the transaction settles
-- it, below), and the unique key asked, as claims are: a transaction that
-- looked the key up first would hold a predicate lock on its index page,
-- and concurrent keyed claims, which insert into the same pages, would fail
-- one another to serialize (seen: 87-91% of keyed one-message claims
-- retried at 64 clients, at a fifteenth of the unkeyed rate). A row older
-- than ttl_hours is taken over. Returns a row per key: a reserved one with
-- its row's place (`slot`), one with a live record with what the record
-- holds (and no slot). A live record that this transaction cannot see
-- (committed since its snapshot) fails it to serialize, and the retry
-- finds the record. `keys` must not hold a key twice.
CREATE OR REPLACE FUNCTION flash_coupons_reserve_keys(
    op TEXT, keys TEXT[], requests TEXT[], ttl_hours INTEGER)
RETURNS TABLE (reserved_key TEXT, slot TID, recorded_request TEXT, recorded_remaining INTEGER)
LANGUAGE plpgsql AS $$
DECLARE
    got   TEXT[] := '{}';
    found INTEGER := 0;
BEGIN
    FOR reserved_key, slot IN
        INSERT INTO idempotency_keys AS k (operation, key, request, status)
            SELECT op, t.key, t.request, 0 FROM unnest(keys, requests) AS t(key, request)
            ON CONFLICT (operation, key) DO UPDATE
            SET request = EXCLUDED.request, status = 0, remaining_amount = NULL,
                created_at = now()
            WHERE k.created_at < now() - make_interval(hours => ttl_hours)
        RETURNING k.key, k.ctid
    LOOP
        got := got || reserved_key;
        RETURN NEXT;
    END LOOP;
    IF cardinality(got) = cardinality(keys) THEN
        RETURN;
    END IF;
    -- Only when a key is recorded: this read is what takes a predicate lock.
    slot := NULL;
    FOR reserved_key, recorded_request, recorded_remaining IN
        SELECT k.key, k.request, k.remaining_amount FROM idempotency_keys k
        WHERE k.operation = op AND k.key = ANY (keys) AND NOT k.key = ANY (got)
        AND k.created_at >= now() - make_interval(hours => ttl_hours)
    LOOP
        found := found + 1;
        RETURN NEXT;
    END LOOP;
    IF cardinality(got) + found < cardinality(keys) THEN
        RAISE EXCEPTION 'an idempotency key was recorded by another transaction meanwhile'
            USING ERRCODE = 'serialization_failure';
    END IF;
END
$$;

-- Settles reserved keys (their rows by `slots`, so by TID, with no index
-- read), before the transaction that reserved them commits: a key whose
-- request took effect gets its answer (a status, and a stock or NULL); the
-- others (status NULL) are removed, their requests being decided afresh
-- when they come again.
CREATE OR REPLACE FUNCTION flash_coupons_settle_keys(
    slots TID[], statuses SMALLINT[], remainings INTEGER[])
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE idempotency_keys k SET status = t.status, remaining_amount = t.remaining
        FROM unnest(slots, statuses, remainings) AS t(slot, status, remaining)
        WHERE k.ctid = t.slot AND t.status IS NOT NULL;
    DELETE FROM idempotency_keys k
        USING unnest(slots, statuses) AS t(slot, status)
        WHERE k.ctid = t.slot AND t.status IS NULL;
END
$$;

-- One claim on one coupon, decided and recorded in one statement: the
-- path of a claim that has no other claim on its coupon to go with (see
-- `Store::claim_one`), which saves it the round trips of the statements
-- the batch path sends one by one. The caller runs it as its own
-- SERIALIZABLE transaction. The rules are the batch path's, for a batch of
-- one: the coupon row locked first, the sale window on the database clock
-- (open from starts_at inclusive until expires_at exclusive), a holder
-- answered already_claimed before stock is looked at, out_of_stock at 0.
-- Returns the outcome, the stock after it (NULL when there is no such
-- coupon or the outcome is busy) and whether the coupon has a sale window.
--
-- The coupon's claim lock (lock_key, see `claim_lock_key`) is only tried,
-- for the rest of the transaction: when another session holds it (another
-- server's batch) the outcome is 'busy' and nothing is done, and the caller
-- takes the batch path, which waits for the lock before its snapshot. Taken
-- here the lock comes after this statement's snapshot: a batch that
-- committed in between makes the row lock below fail to serialize, and the
-- caller retries.
--
-- With an idempotency key (`idem_key`; NULL: none), a live record of the
-- key answers instead ('replayed' with its stock, or 'key_mismatch' when
-- it was recorded for another request), and a granted claim records it.
-- Where the claim may be granted, the key is inserted first, already as
-- granted (flash_coupons_reserve_keys' way, for one key, and without its
-- placeholder, since the stock the answer will carry is known by then):
-- only a claim that turns out not granted removes it again. Elsewhere (no
-- such coupon, its window closed, no stock) nothing is inserted and the
-- key is looked up, which on these paths contends with nothing.
CREATE OR REPLACE FUNCTION flash_coupons_claim_one(
    coupon TEXT, claimant TEXT, lock_key BIGINT, idem_key TEXT, fingerprint TEXT,
    ttl_hours INTEGER)
RETURNS TABLE (outcome TEXT, remaining INTEGER, windowed BOOLEAN)
LANGUAGE plpgsql AS $$
DECLARE
    stock    INTEGER;
    starts   TIMESTAMPTZ;
    expires  TIMESTAMPTZ;
    mine     TID;
    recorded RECORD;
BEGIN
    IF NOT pg_try_advisory_xact_lock(lock_key) THEN
        RETURN QUERY SELECT 'busy', NULL::INTEGER, false;
        RETURN;
    END IF;
    -- NO KEY UPDATE, as the batch path: the new claim row's foreign key
    -- takes KEY SHARE on this row, which this lock must not block.
    SELECT c.remaining_amount, c.starts_at, c.expires_at INTO stock, starts, expires
        FROM coupons c WHERE c.name = coupon FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        outcome := 'coupon_not_found';
        windowed := false;
    ELSE
        windowed := starts IS NOT NULL OR expires IS NOT NULL;
        remaining := stock;
        IF starts IS NOT NULL AND now() < starts THEN
            outcome := 'not_started';
        ELSIF expires IS NOT NULL AND now() >= expires THEN
            outcome := 'expired';
        ELSIF stock > 0 THEN
            IF idem_key IS NOT NULL THEN
                INSERT INTO idempotency_keys AS k (operation, key, request, status, remaining_amount)
                    VALUES ('claim', idem_key, fingerprint, 200, stock - 1)
                    ON CONFLICT (operation, key) DO UPDATE
                    SET request = EXCLUDED.request, status = EXCLUDED.status,
                        remaining_amount = EXCLUDED.remaining_amount, created_at = now()
                    WHERE k.created_at < now() - make_interval(hours => ttl_hours)
                RETURNING k.ctid INTO mine;
            END IF;
            IF idem_key IS NULL OR mine IS NOT NULL THEN
                -- Inserted first and the unique key asked, as in the batch
                -- path: no read of the key, so no predicate lock on its
                -- index pages.
                INSERT INTO claims (user_id, coupon_name) VALUES (claimant, coupon)
                    ON CONFLICT (coupon_name, user_id) DO NOTHING;
                IF FOUND THEN
                    UPDATE coupons SET remaining_amount = remaining_amount - 1
                        WHERE name = coupon;
                    outcome := 'claimed';
                    remaining := stock - 1;
                ELSE
                    outcome := 'already_claimed';
                    IF mine IS NOT NULL THEN
                        DELETE FROM idempotency_keys WHERE ctid = mine;
                    END IF;
                END IF;
                RETURN NEXT;
                RETURN;
            END IF;
            -- The key has a live record: answered from it below.
        ELSIF EXISTS (SELECT 1 FROM claims c WHERE c.coupon_name = coupon AND c.user_id = claimant) THEN
            outcome := 'already_claimed';
        ELSE
            outcome := 'out_of_stock';
        END IF;
    END IF;
    IF idem_key IS NOT NULL THEN
        SELECT k.request, k.remaining_amount INTO recorded FROM idempotency_keys k
            WHERE k.operation = 'claim' AND k.key = idem_key
            AND k.created_at >= now() - make_interval(hours => ttl_hours);
        IF FOUND THEN
            outcome := CASE WHEN recorded.request = fingerprint THEN 'replayed' ELSE 'key_mismatch' END;
            remaining := CASE WHEN outcome = 'replayed' THEN recorded.remaining_amount END;
            windowed := false;
        ELSIF outcome IS NULL THEN
            -- Not seen above and not found now: recorded by a transaction
            -- this one cannot see. The caller's retry finds it.
            RAISE EXCEPTION 'an idempotency key was recorded by another transaction meanwhile'
                USING ERRCODE = 'serialization_failure';
        END IF;
    END IF;
    RETURN NEXT;
END
$$;

-- The one-claim function as servers of the previous version call it,
-- during a rolling upgrade: without a key.
CREATE OR REPLACE FUNCTION flash_coupons_claim_one(coupon TEXT, claimant TEXT, lock_key BIGINT)
RETURNS TABLE (outcome TEXT, remaining INTEGER, windowed BOOLEAN)
LANGUAGE sql AS $$
    SELECT * FROM flash_coupons_claim_one(coupon, claimant, lock_key, NULL, NULL, 0)
$$;

-- The version of this file, recorded by the server that applied it. A
-- server starting against a database whose recorded version is its own (or
-- newer) applies nothing: it takes no lock stronger than the claim path's,
-- so that starting a replica never makes a running one's claims wait (see
-- `store::schema`). Raise the number whenever this file changes, here and in
-- src/store/schema.rs (SCHEMA_VERSION); a unit test there holds the two
-- together.
CREATE TABLE IF NOT EXISTS flash_coupons_schema (
    only_row   BOOLEAN     PRIMARY KEY DEFAULT true CHECK (only_row),
    version    INTEGER     NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO flash_coupons_schema (version) VALUES (6)
    ON CONFLICT (only_row) DO UPDATE
    SET version = GREATEST(flash_coupons_schema.version, EXCLUDED.version), applied_at = now();
