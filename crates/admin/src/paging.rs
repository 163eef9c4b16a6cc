//! Paged reads of history: how many records a page may hold, and the cursor of usage pages.
//!
//! Ledgers, bills, events and closed days' usage grow every day, so no read returns all of
//! them: a request names where the previous page ended and how many records it wants, and a
//! reply names where the next page starts (absent when it is the last).

use crate::accounts::{day_name, parse_day};
use tonic::Status;

/// The records a page holds when the request does not say (`limit` 0).
pub const DEFAULT_LIMIT: usize = 100;
/// The most records a page may hold: bounds what one call reads and sends.
pub const MAX_LIMIT: usize = 1000;

/// The page size a request's `limit` asks for: 0 is [`DEFAULT_LIMIT`], more than
/// [`MAX_LIMIT`] is refused.
pub fn limit(asked: u32) -> Result<usize, Status> {
    match asked as usize {
        0 => Ok(DEFAULT_LIMIT),
        n if n <= MAX_LIMIT => Ok(n),
        n => Err(Status::invalid_argument(format!(
            "invalid limit: {n} is more than {MAX_LIMIT}; give 1 to {MAX_LIMIT} (0 or absent: {DEFAULT_LIMIT})"
        ))),
    }
}

/// Where a page of usage ended: one account's day (pages go by account, then day).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCursor {
    pub account: String,
    /// Days since 1970-01-01.
    pub day: u64,
}

impl UsageCursor {
    /// Parses `ACCOUNT/YYYY-MM-DD` (account names hold no `/`), as `field`.
    pub fn parse(field: &str, s: &str) -> Result<UsageCursor, Status> {
        let bad = || {
            Status::invalid_argument(format!(
                "invalid {field}: '{s}' is not a cursor like acme/2026-01-31 (the next_after of the previous page)"
            ))
        };
        let (account, day) = s.split_once('/').ok_or_else(bad)?;
        if account.is_empty() {
            return Err(bad());
        }
        Ok(UsageCursor {
            account: account.to_string(),
            day: parse_day(field, day).map_err(|_| bad())?,
        })
    }
}

impl std::fmt::Display for UsageCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.account, day_name(self.day))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn limits_default_and_are_capped() {
        assert_eq!(limit(0).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit(1).unwrap(), 1);
        assert_eq!(limit(MAX_LIMIT as u32).unwrap(), MAX_LIMIT);
        let e = limit(MAX_LIMIT as u32 + 1).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message().starts_with("invalid limit: 1001"),
            "{}",
            e.message()
        );
        assert!(e.message().contains("1 to 1000"), "{}", e.message());
        assert_eq!(limit(u32::MAX).unwrap_err().code(), Code::InvalidArgument);
    }

    #[test]
    fn usage_cursors_round_trip() {
        let c = UsageCursor::parse("after", "acme-2.x/2026-01-31").unwrap();
        assert_eq!(c.account, "acme-2.x");
        assert_eq!(day_name(c.day), "2026-01-31");
        assert_eq!(c.to_string(), "acme-2.x/2026-01-31");
        assert_eq!(UsageCursor::parse("after", &c.to_string()).unwrap(), c);
    }

    #[test]
    fn bad_usage_cursors_name_the_field() {
        for bad in [
            "",
            "acme",
            "/2026-01-31",
            "acme/",
            "acme/2026-13-01",
            "acme/x/2026-01-01",
        ] {
            let e = UsageCursor::parse("after", bad).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{bad}");
            assert!(
                e.message().starts_with("invalid after: "),
                "{}",
                e.message()
            );
        }
    }

    #[test]
    fn days_round_trip_as_bill_cursors() {
        let day = parse_day("after_day", "2026-02-28").unwrap();
        assert_eq!(day_name(day), "2026-02-28");
        assert_eq!(parse_day("after_day", &day_name(day + 1)).unwrap(), day + 1);
        let e = parse_day("after_day", "28/02/2026").unwrap_err();
        assert!(
            e.message().starts_with("invalid after_day: "),
            "{}",
            e.message()
        );
    }
}
