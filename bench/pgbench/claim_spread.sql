-- The S4 shape: the same one-claim transaction as claim_hot.sql, on a coupon
-- drawn at random from pg4-0 .. pg4-999.
\set c random(0, 999)
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT remaining_amount, 'pg4-' || :c::int AS coupon, 'pg-' || nextval('bench_user_seq') AS u FROM coupons WHERE name = 'pg4-' || :c::int FOR NO KEY UPDATE \gset
SELECT user_id FROM claims WHERE coupon_name = :coupon AND user_id = ANY(ARRAY[:u]);
INSERT INTO claims (user_id, coupon_name) VALUES (:u, :coupon);
UPDATE coupons SET remaining_amount = remaining_amount - 1 WHERE name = :coupon;
COMMIT;
