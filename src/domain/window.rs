use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// When a coupon may be claimed: from `starts_at` (inclusive) until
/// `expires_at` (exclusive); either end may be open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SaleWindow {
    starts_at: Option<OffsetDateTime>,
    expires_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndNotAfterStart;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    Open,
    NotStarted,
    Expired,
}

impl SaleWindow {
    pub fn new(
        starts_at: Option<OffsetDateTime>,
        expires_at: Option<OffsetDateTime>,
    ) -> Result<SaleWindow, EndNotAfterStart> {
        match (starts_at, expires_at) {
            (Some(start), Some(end)) if end <= start => Err(EndNotAfterStart),
            _ => Ok(SaleWindow {
                starts_at,
                expires_at,
            }),
        }
    }

    pub fn starts_at(&self) -> Option<OffsetDateTime> {
        self.starts_at
    }

    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        self.expires_at
    }

    pub fn is_always_open(&self) -> bool {
        self.starts_at.is_none() && self.expires_at.is_none()
    }

    /// Where `now` (the database's clock) falls.
    pub fn state_at(&self, now: OffsetDateTime) -> WindowState {
        if self.starts_at.is_some_and(|start| now < start) {
            WindowState::NotStarted
        } else if self.expires_at.is_some_and(|end| now >= end) {
            WindowState::Expired
        } else {
            WindowState::Open
        }
    }
}

/// An RFC 3339 timestamp such as `2026-11-25T12:00:00Z`, in UTC, to the
/// microsecond (what PostgreSQL keeps), and within years 1 to 9999 in UTC
/// (what both PostgreSQL and RFC 3339 can hold), so that what is stored is
/// exactly what is shown back.
pub fn parse_instant(raw: &str) -> Option<OffsetDateTime> {
    let at = OffsetDateTime::parse(raw, &Rfc3339)
        .ok()?
        .checked_to_offset(time::UtcOffset::UTC)?;
    if !(1..=9999).contains(&at.year()) {
        return None;
    }
    at.replace_nanosecond(at.nanosecond() / 1000 * 1000).ok()
}

/// The RFC 3339 form, in UTC.
pub fn format_instant(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn at(raw: &str) -> OffsetDateTime {
        parse_instant(raw).unwrap()
    }

    #[test]
    fn the_start_is_inclusive_and_the_end_exclusive() {
        let start = at("2026-11-25T12:00:00Z");
        let end = at("2026-11-25T13:00:00Z");
        let w = SaleWindow::new(Some(start), Some(end)).unwrap();
        let tick = Duration::microseconds(1);
        assert_eq!(w.state_at(start - tick), WindowState::NotStarted);
        assert_eq!(w.state_at(start), WindowState::Open);
        assert_eq!(w.state_at(end - tick), WindowState::Open);
        assert_eq!(w.state_at(end), WindowState::Expired);
        assert_eq!(w.state_at(end + tick), WindowState::Expired);
    }

    #[test]
    fn an_end_not_after_the_start_is_refused() {
        let t = at("2026-11-25T12:00:00+07:00");
        assert_eq!(SaleWindow::new(Some(t), Some(t)), Err(EndNotAfterStart));
        assert!(SaleWindow::new(Some(t), None).is_ok());
        assert!(SaleWindow::new(None, Some(t)).is_ok());
    }

    #[test]
    fn timestamps_parse_with_offsets_and_format_in_utc() {
        assert_eq!(
            format_instant(at("2026-11-25T19:00:00+07:00")),
            "2026-11-25T12:00:00Z"
        );
        assert!(parse_instant("2026-11-25 12:00").is_none());
        assert!(parse_instant("9999-12-31T23:59:59-23:59").is_none());
        assert!(parse_instant("0000-01-01T00:00:00+23:59").is_none());
        assert_eq!(
            format_instant(at("2026-11-25T12:00:00.000000999Z")),
            "2026-11-25T12:00:00Z"
        );
        assert!(parse_instant("tomorrow").is_none());
    }
}
