-- Applied by the server at every start (and mountable into the postgres
-- image's initdb directory): every statement must be safe to run again.

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

-- Claim order per coupon, for claimed_by; the unique index above leads with
-- user_id and cannot serve it.
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
