use postgres::{Client, NoTls, Statement};
use r2d2::ManageConnection;
use r2d2_postgres::PostgresConnectionManager;

/// Every statement the service runs, parsed once when a connection opens
/// so that a request never pays for a parse round trip. (Plans are made per
/// execution: see plan_cache_mode in `Store::open`.)
pub struct Statements {
    pub insert_coupon: Statement,
    pub coupon_counts: Statement,
    pub lock_coupon: Statement,
    pub holders_among: Statement,
    pub insert_new_claims: Statement,
    pub drop_claims: Statement,
    pub take_stock: Statement,
    pub holders_limited: Statement,
    pub holds: Statement,
    pub claims_page: Statement,
    pub coupons_page: Statement,
}

impl Statements {
    fn prepare(client: &mut Client) -> Result<Statements, postgres::Error> {
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
                "SELECT remaining_amount, starts_at, expires_at, now() FROM coupons \
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
            drop_claims: client.prepare(
                "DELETE FROM claims WHERE coupon_name = $1 AND user_id = ANY($2)",
            )?,
            take_stock: client.prepare(
                "UPDATE coupons SET remaining_amount = remaining_amount - $2 WHERE name = $1",
            )?,
            holders_limited: client.prepare(
                "SELECT user_id FROM claims WHERE coupon_name = $1 ORDER BY id LIMIT $2",
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
        })
    }
}

/// A pooled connection and its prepared statements, which belong to it.
pub struct Conn {
    pub client: Client,
    pub stmts: Statements,
}

/// r2d2_postgres's manager, extended to prepare the statements on connect.
pub struct Manager {
    inner: PostgresConnectionManager<NoTls>,
}

impl Manager {
    pub fn new(config: postgres::Config) -> Manager {
        Manager {
            inner: PostgresConnectionManager::new(config, NoTls),
        }
    }
}

impl ManageConnection for Manager {
    type Connection = Conn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Conn, postgres::Error> {
        let mut client = self.inner.connect()?;
        let stmts = Statements::prepare(&mut client)?;
        Ok(Conn { client, stmts })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), postgres::Error> {
        self.inner.is_valid(&mut conn.client)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        self.inner.has_broken(&mut conn.client)
    }
}
