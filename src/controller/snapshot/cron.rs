//! Cron expressions (5 fields, with names and the usual macros) read in an IANA time zone, and
//! the durations of the snapshot kinds' specs. Pure: no I/O but the time zone database.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::civil::{Date, DateTime};
use k8s_openapi::jiff::tz::TimeZone;

/// A parsed cron expression: `minute hour day-of-month month day-of-week`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Day-of-month or day-of-week is `*`: cron then matches on the other one alone
    /// (when both are restricted, a day matching either runs).
    days_any: bool,
    weekdays_any: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn value(text: &str, names: &[&str], offset: u32, field: &str) -> Result<u32, String> {
    if let Ok(n) = text.parse::<u32>() {
        return Ok(n);
    }
    names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(text))
        .map(|i| i as u32 + offset)
        .ok_or_else(|| format!("'{text}' is not a valid {field}"))
}

/// Parses one field into a bit set of the values `min..=max`; returns (bits, was `*`).
fn field(
    text: &str,
    min: u32,
    max: u32,
    names: &[&str],
    name_offset: u32,
    what: &str,
) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let star = text == "*" || text == "?";
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| format!("step '{s}' of the {what} field is not a number"))?;
                if step == 0 {
                    return Err(format!("step 0 in the {what} field"));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                value(a, names, name_offset, what)?,
                value(b, names, name_offset, what)?,
            )
        } else {
            let v = value(range, names, name_offset, what)?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{what} '{range}' is outside {min}-{max}"));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, star))
}

impl Cron {
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let expanded = match expr.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields[..] else {
            return Err(format!(
                "'{expr}' has {} fields; cron needs 5 (minute hour day-of-month month day-of-week)",
                fields.len()
            ));
        };
        let (minutes, _) = field(minute, 0, 59, &[], 0, "minute")?;
        let (hours, _) = field(hour, 0, 23, &[], 0, "hour")?;
        let (days, days_any) = field(dom, 1, 31, &[], 0, "day of month")?;
        let (months, _) = field(month, 1, 12, &MONTHS, 1, "month")?;
        let (mut weekdays, weekdays_any) = field(dow, 0, 7, &WEEKDAYS, 0, "day of week")?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & 0x7f;
        }
        Ok(Cron {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            days_any,
            weekdays_any,
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        match (self.days_any, self.weekdays_any) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    /// The first time strictly after `after` that matches, read in `tz` (a wall time skipped by
    /// a DST change runs at the first instant after the gap). `None` if none within 5 years.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start: DateTime = tz.to_datetime(after);
        let mut date = start.date();
        for _ in 0..(366 * 5) {
            if self.day_matches(date) {
                for hour in 0..24i8 {
                    if self.hours & (1 << hour) == 0 {
                        continue;
                    }
                    for minute in 0..60i8 {
                        if self.minutes & (1 << minute) == 0 {
                            continue;
                        }
                        let dt = date.at(hour, minute, 0, 0);
                        if date == start.date() && dt <= start {
                            continue;
                        }
                        let ts = tz.to_ambiguous_zoned(dt).compatible().ok()?.timestamp();
                        if ts > after {
                            return Some(ts);
                        }
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

/// Reads an IANA time zone (`None`: UTC).
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, String> {
    match name {
        None => Ok(TimeZone::UTC),
        Some(name) => TimeZone::get(name).map_err(|e| format!("unknown time zone '{name}': {e}")),
    }
}

/// Parses `0`, `30s`, `5m`, `1h30m`, `7d`, `500ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("'{text}' is not a duration such as 30s, 5m, 1h or 7d"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("'{text}': number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            "d" => Duration::from_secs(n * 86400),
            other => return Err(format!("'{text}': unknown unit '{other}' (use ms, s, m, h or d)")),
        };
        total += unit;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_rejects() {
        assert!(Cron::parse("*/5 * * * *").is_ok());
        assert!(Cron::parse("0 3 * * mon-fri").is_ok());
        assert!(Cron::parse("@daily").is_ok());
        assert!(Cron::parse("0 3 * *").unwrap_err().contains("5"));
        assert!(Cron::parse("61 * * * *").unwrap_err().contains("minute"));
        assert!(Cron::parse("0 0 * foo *").unwrap_err().contains("month"));
        assert!(Cron::parse("*/0 * * * *").is_err());
    }

    #[test]
    fn next_runs_in_utc() {
        let c = Cron::parse("*/15 * * * *").unwrap();
        assert_eq!(
            c.next_after(ts("2026-11-23T10:07:30Z"), &TimeZone::UTC),
            Some(ts("2026-11-23T10:15:00Z"))
        );
        assert_eq!(
            c.next_after(ts("2026-11-23T10:15:00Z"), &TimeZone::UTC),
            Some(ts("2026-11-23T10:30:00Z"))
        );
        let daily = Cron::parse("30 2 * * *").unwrap();
        assert_eq!(
            daily.next_after(ts("2026-11-23T10:00:00Z"), &TimeZone::UTC),
            Some(ts("2026-11-24T02:30:00Z"))
        );
        // Sunday as 0 and 7; Nov 29 2026 is a Sunday.
        for expr in ["0 0 * * 0", "0 0 * * 7", "0 0 * * sun"] {
            let c = Cron::parse(expr).unwrap();
            assert_eq!(
                c.next_after(ts("2026-11-23T10:00:00Z"), &TimeZone::UTC),
                Some(ts("2026-11-29T00:00:00Z")),
                "{expr}"
            );
        }
        // Day of month OR day of week when both are given.
        let either = Cron::parse("0 0 25 * sun").unwrap();
        assert_eq!(
            either.next_after(ts("2026-11-23T10:00:00Z"), &TimeZone::UTC),
            Some(ts("2026-11-25T00:00:00Z"))
        );
        assert_eq!(
            Cron::parse("0 0 30 2 *")
                .unwrap()
                .next_after(ts("2026-01-01T00:00:00Z"), &TimeZone::UTC),
            None
        );
    }

    #[test]
    fn next_runs_in_a_time_zone() {
        let paris = time_zone(Some("Europe/Paris")).unwrap();
        let c = Cron::parse("0 3 * * *").unwrap();
        // Winter: UTC+1.
        assert_eq!(
            c.next_after(ts("2026-11-23T10:00:00Z"), &paris),
            Some(ts("2026-11-24T02:00:00Z"))
        );
        // 2026-03-29 02:30 does not exist in Paris: runs right after the gap.
        let gap = Cron::parse("30 2 * * *").unwrap();
        assert_eq!(
            gap.next_after(ts("2026-03-28T12:00:00Z"), &paris),
            Some(ts("2026-03-29T01:30:00Z"))
        );
        assert!(time_zone(Some("Mars/Olympus")).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("m").is_err());
    }
}
