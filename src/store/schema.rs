//! The schema (schema.sql, compiled into the binary so that the server runs
//! against an empty database with nothing mounted), and bringing a database
//! up to date with it at start.
//!
//! Applying schema.sql takes strong locks even where nothing changes: `ALTER
//! TABLE ... ADD COLUMN IF NOT EXISTS` takes ACCESS EXCLUSIVE on the table,
//! `CREATE INDEX IF NOT EXISTS` SHARE. Such a lock request queues behind any
//! long reader of the table (pg_dump, an analytical query), and every claim
//! then queues behind it. So the database records the version of the
//! schema.sql that was applied (the table `flash_coupons_schema`), and a
//! server whose schema is not newer applies nothing: one read of that table,
//! no lock on `coupons` or `claims` at all. When the schema does need to
//! change, every lock is waited for at most [`LOCK_WAIT`]; a lock that is
//! not had by then ends the attempt, and start-up tries again a little later
//! (see `startup`), rather than keep claims waiting behind the request.

use std::time::Duration;

use postgres::GenericClient;

/// The schema.
pub const SCHEMA_SQL: &str = include_str!("../../schema.sql");

/// The version schema.sql records in `flash_coupons_schema`. Raised with
/// every change to schema.sql, in both places (a test below checks).
pub const SCHEMA_VERSION: i32 = 6;

/// The longest start-up waits for any one lock while changing the schema:
/// while it waits, claims on the same table queue behind it.
pub const LOCK_WAIT: Duration = Duration::from_millis(100);

/// Start-up's session while it brings the schema up to date: LOCK_WAIT as
/// lock_timeout (in milliseconds; a test holds the two together), and the
/// notices of `IF NOT EXISTS` kept out of the log.
const SCHEMA_SESSION: &str = "SET lock_timeout = 100; SET client_min_messages = warning";

/// Serializes servers that change the schema at the same moment:
/// `CREATE ... IF NOT EXISTS` is not safe against a concurrent twin.
const APPLY_LOCK: i64 = 7_243_020_151;

/// What bringing the schema up to date came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The database already had this version (or a newer one, from a newer
    /// server in a rolling upgrade): nothing was changed.
    Current { version: i32 },
    /// schema.sql was applied, over the recorded version `from` (`None`: the
    /// database had none recorded, being new or older than versions).
    Brought { from: Option<i32> },
}

/// The encoding the database stores text in, as PostgreSQL names it
/// (`UTF8`, `LATIN1`, `SQL_ASCII`, ...).
pub fn server_encoding(client: &mut postgres::Client) -> Result<String, postgres::Error> {
    let row = client.query_one("SELECT current_setting('server_encoding') AS encoding", &[])?;
    Ok(row.get("encoding"))
}

/// Applies schema.sql unless the database records this version or a newer
/// one. Every lock is waited for at most [`LOCK_WAIT`] (55P03 past it), the
/// version's read included; the session is start-up's own.
pub fn bring_up_to_date(client: &mut postgres::Client) -> Result<Applied, postgres::Error> {
    client.batch_execute(SCHEMA_SESSION)?;
    let recorded = recorded_version(client)?;
    if let Some(version) = recorded.filter(|&v| v >= SCHEMA_VERSION) {
        return Ok(Applied::Current { version });
    }
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&APPLY_LOCK])?;
    // Another server may have brought it up to date while this one waited.
    let recorded = recorded_version(&mut tx)?;
    if let Some(version) = recorded.filter(|&v| v >= SCHEMA_VERSION) {
        return Ok(Applied::Current { version });
    }
    tx.batch_execute(SCHEMA_SQL)?;
    tx.commit()?;
    Ok(Applied::Brought { from: recorded })
}

/// The version recorded in the database, if any. `to_regclass` looks the
/// table up by name without locking anything.
fn recorded_version(client: &mut impl GenericClient) -> Result<Option<i32>, postgres::Error> {
    let present: bool = client
        .query_one(
            "SELECT to_regclass('flash_coupons_schema') IS NOT NULL AS present",
            &[],
        )?
        .get("present");
    if !present {
        return Ok(None);
    }
    Ok(client
        .query_opt("SELECT version FROM flash_coupons_schema", &[])?
        .map(|row| row.get("version")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a (64-bit) of schema.sql's statements (its lines without
    /// comments and surrounding whitespace) as they were when SCHEMA_VERSION
    /// was last raised: a comment may change without a new version.
    const SCHEMA_SQL_FNV: u64 = 0xb8d3_fc83_111a_1f24;

    #[test]
    fn schema_sql_records_the_version_the_server_compares_with() {
        let recorded =
            format!("INSERT INTO flash_coupons_schema (version) VALUES ({SCHEMA_VERSION})");
        assert!(
            SCHEMA_SQL.contains(&recorded),
            "schema.sql must end with {recorded}"
        );
    }

    #[test]
    fn the_schema_session_waits_for_a_lock_at_most_lock_wait() {
        let setting = format!("SET lock_timeout = {};", LOCK_WAIT.as_millis());
        assert!(SCHEMA_SESSION.starts_with(&setting), "{SCHEMA_SESSION}");
    }

    /// A change to schema.sql that keeps the version would never reach a
    /// database that has the version already.
    #[test]
    fn schema_sql_changes_only_with_its_version() {
        let statements: String = SCHEMA_SQL
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        let fnv = statements.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        assert_eq!(
            fnv, SCHEMA_SQL_FNV,
            "schema.sql changed: raise SCHEMA_VERSION (in src/store/schema.rs and at the end of \
             schema.sql), then set SCHEMA_SQL_FNV to {fnv:#x}"
        );
    }
}
