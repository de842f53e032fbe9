use postgres::Client;

/// The schema, compiled into the binary so the server runs against an empty
/// database with nothing mounted.
pub const SCHEMA_SQL: &str = include_str!("../../schema.sql");

/// Applies the schema under a transaction-scoped advisory lock, so that
/// several servers starting together on one database do not race on
/// CREATE ... IF NOT EXISTS (which is not concurrency-safe by itself).
pub fn apply(client: &mut Client) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock(7243020151)", &[])?;
    tx.batch_execute(SCHEMA_SQL)?;
    tx.commit()
}
