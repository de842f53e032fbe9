-- Baseline fixtures, applied after the server has created the schema.
-- pg-hot: one coupon with stock that no run can exhaust.
-- pg4-0 .. pg4-999: the S4 shape, 1,000 coupons.
-- bench_user_seq: unique user ids for every pgbench transaction.
CREATE SEQUENCE IF NOT EXISTS bench_user_seq;
INSERT INTO coupons (name, amount, remaining_amount)
VALUES ('pg-hot', 2000000000, 2000000000)
ON CONFLICT (name) DO NOTHING;
INSERT INTO coupons (name, amount, remaining_amount)
SELECT 'pg4-' || g, 2000000000, 2000000000 FROM generate_series(0, 999) AS g
ON CONFLICT (name) DO NOTHING;
