-- One claim by a new user on the hot coupon, as the server runs it today
-- (src/store/claim.rs with a batch of one): one SERIALIZABLE transaction,
-- the coupon row locked first. The new user's id comes from a sequence in
-- the locking SELECT, so it costs no round trip of its own and never
-- repeats, across runs and retries alike; \gset keeps it as :u, which the
-- later statements take as a parameter (bench/run uses -M prepared).
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT remaining_amount, 'pg-' || nextval('bench_user_seq') AS u FROM coupons WHERE name = 'pg-hot' FOR NO KEY UPDATE \gset
SELECT user_id FROM claims WHERE coupon_name = 'pg-hot' AND user_id = ANY(ARRAY[:u]);
INSERT INTO claims (user_id, coupon_name) VALUES (:u, 'pg-hot');
UPDATE coupons SET remaining_amount = remaining_amount - 1 WHERE name = 'pg-hot';
COMMIT;
