//! Microsecond UTC timestamps: the only clock type the event model knows.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Microseconds since the Unix epoch, UTC. Events carry time at this precision (DESIGN: "UTC, microseconds").
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The wall clock now. Only the edges (appender, HTTP layer) call this; deciders receive `now`.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_micros() as i64)
    }

    pub fn from_secs(secs: i64) -> Self {
        Timestamp(secs.saturating_mul(1_000_000))
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    pub fn plus_secs(self, secs: i64) -> Self {
        Timestamp(self.0.saturating_add(secs.saturating_mul(1_000_000)))
    }

    /// Parses RFC 3339 in UTC (`2026-11-22T10:00:00Z`, fractional seconds optional). Each
    /// field has exactly its digits (a four-digit year, two for the rest): no sign, so no
    /// field can be negative or carry the sum out of range.
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        fn digits(s: &str, n: usize) -> Option<i64> {
            (s.len() == n && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        }
        let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
        let (date, time) = s.split_once('T')?;
        let mut d = date.splitn(3, '-');
        let y = digits(d.next()?, 4)?;
        let m = u32::try_from(digits(d.next()?, 2)?).ok()?;
        let day = u32::try_from(digits(d.next()?, 2)?).ok()?;
        let (hms, frac) = match time.split_once('.') {
            Some((a, b)) => (a, Some(b)),
            None => (time, None),
        };
        let mut t = hms.splitn(3, ':');
        let hh = digits(t.next()?, 2)?;
        let mm = digits(t.next()?, 2)?;
        let ss = digits(t.next()?, 2)?;
        if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
            return None;
        }
        let micros = match frac {
            None => 0,
            Some(f) if !f.is_empty() && f.len() <= 9 && f.bytes().all(|b| b.is_ascii_digit()) => {
                let padded = format!("{f:0<6}");
                padded[..6].parse::<i64>().ok()?
            }
            Some(_) => return None,
        };
        let days = days_from_civil(y, m, day);
        // A day past its month's end (`2026-02-31`) is not a date: it would land days later.
        if civil_from_days(days) != (y, m, day) {
            return None;
        }
        Some(Timestamp(
            ((days * 86_400) + hh * 3600 + mm * 60 + ss) * 1_000_000 + micros,
        ))
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 UTC with microseconds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        )
    }
}

// Howard Hinnant's civil-date algorithms.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        let t = Timestamp::parse_rfc3339("2026-11-22T02:50:00.123456Z").unwrap();
        assert_eq!(t.to_string(), "2026-11-22T02:50:00.123456Z");
        assert_eq!(Timestamp(0).to_string(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            Timestamp::parse_rfc3339("2000-02-29T00:00:00Z").unwrap().0,
            951_782_400_000_000
        );
        assert!(Timestamp::parse_rfc3339("2026-13-01T00:00:00Z").is_none());
        // Days past their month's end, and a 29 February outside a leap year.
        for bad in [
            "2026-02-31T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-11-31T12:00:00Z",
        ] {
            assert!(Timestamp::parse_rfc3339(bad).is_none(), "{bad}");
        }
        assert!(Timestamp::parse_rfc3339("2024-02-29T00:00:00Z").is_some());
        assert!(Timestamp::parse_rfc3339("2026-12-31T23:59:59Z").is_some());
        assert!(Timestamp::parse_rfc3339("yesterday").is_none());
        // Signs, missing or extra digits and years out of four digits are not RFC 3339 (and
        // would have made a time far out of range, or overflowed).
        for bad in [
            "2026-11-22T-1:00:00Z",
            "2026-11-22T10:-5:00Z",
            "2026-11-22T10:00:+1Z",
            "2026-11-22T1:00:00Z",
            "2026-1-22T10:00:00Z",
            "99999999999999-01-01T00:00:00Z",
            "-2026-01-01T00:00:00Z",
            "+2026-01-01T00:00:00Z",
        ] {
            assert!(Timestamp::parse_rfc3339(bad).is_none(), "{bad}");
        }
        assert_eq!(
            Timestamp::parse_rfc3339("9999-12-31T23:59:59Z").unwrap().0,
            253_402_300_799_000_000
        );
    }
}
