-- The S4 shape as the server decides a claim alone on its coupon: one round
-- trip, one implicit SERIALIZABLE transaction around flash_coupons_claim_one
-- (schema.sql) with a statement timeout. The server sends the call as a
-- prepared statement at its pooled session's defaults (serializable, the
-- timeout); this script sends one message that sets them (statements joined
-- with \;). On a coupon drawn at random from
-- pg4-0 .. pg4-999. The lock key is a constant per coupon here (any bigint
-- works: it only has to be the same for the same coupon).
\set c random(0, 999)
\set u random(1, 2000000000)
SET TRANSACTION ISOLATION LEVEL SERIALIZABLE \; SET LOCAL statement_timeout = 4500 \; SELECT outcome FROM flash_coupons_claim_one('pg4-' || :c, 'pg1-' || nextval('bench_user_seq'), :c)
