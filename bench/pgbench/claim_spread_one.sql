-- The S4 shape as the server sends a claim alone on its coupon: one message
-- (statements joined with \;), one implicit SERIALIZABLE transaction around
-- flash_coupons_claim_one (schema.sql), on a coupon drawn at random from
-- pg4-0 .. pg4-999. The lock key is a constant per coupon here (any bigint
-- works: it only has to be the same for the same coupon).
\set c random(0, 999)
\set u random(1, 2000000000)
SET TRANSACTION ISOLATION LEVEL SERIALIZABLE \; SET LOCAL statement_timeout = 4500 \; SELECT outcome FROM flash_coupons_claim_one('pg4-' || :c, 'pg1-' || nextval('bench_user_seq'), :c)
