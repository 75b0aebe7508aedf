//! Cron expressions (5 fields, with names and the usual macros) read in an IANA time zone, and
//! the durations of the snapshot kinds' specs, on `croner` and `humantime`. Pure: no I/O but the
//! time zone database.

use std::time::Duration;

use croner::parser::{CronParser, Seconds, Year};
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// A parsed cron expression: `minute hour day-of-month month day-of-week` (names, ranges, steps,
/// the `@daily`-style macros; a day matches when either day field does, as in vixie cron).
#[derive(Clone, Debug)]
pub struct Cron(croner::Cron);

const FIELD_NAMES: [&str; 5] = ["minute", "hour", "day of month", "month", "day of week"];

fn parse_pattern(pattern: &str) -> Result<Cron, croner::errors::CronError> {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(pattern)
        .map(Cron)
}

impl Cron {
    pub fn parse(expr: &str) -> Result<Cron, String> {
        let expr = expr.trim();
        if expr.starts_with('@') {
            return parse_pattern(expr).map_err(|e| format!("'{expr}': {e}"));
        }
        let fields: Vec<&str> = expr.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "'{expr}' has {} fields; cron needs 5 (minute hour day-of-month month day-of-week)",
                fields.len()
            ));
        }
        parse_pattern(expr).map_err(|err| {
            // The library's message does not say which field is wrong: each field is tried
            // alone, the others `*`, to name it.
            let culprit = (0..5).find(|&i| {
                let alone: Vec<&str> = (0..5).map(|j| if i == j { fields[j] } else { "*" }).collect();
                parse_pattern(&alone.join(" ")).is_err()
            });
            match culprit {
                Some(i) => format!("{} '{}' of '{expr}': {err}", FIELD_NAMES[i], fields[i]),
                None => format!("'{expr}': {err}"),
            }
        })
    }

    /// The first time strictly after `after` that matches, read in `tz` (a wall time skipped by
    /// a DST change runs at the first instant after the gap; one that happens twice runs once). `None` if none within 5 years: a schedule such as
    /// February 30 never runs, and the search must not walk to the library's year limit.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let horizon = after.checked_add(SignedDuration::from_hours(5 * 366 * 24)).ok()?;
        let next = self
            .0
            .find_next_occurrence(&after.to_zoned(tz.clone()), false)
            .ok()?
            .timestamp();
        (next <= horizon).then_some(next)
    }
}

/// Reads an IANA time zone (`None`: UTC).
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, String> {
    match name {
        None => Ok(TimeZone::UTC),
        Some(name) => TimeZone::get(name).map_err(|e| format!("unknown time zone '{name}': {e}")),
    }
}

/// Parses the durations the CRDs let through (`0`, `30s`, `5m`, `1h30m`, `7d`, `500ms`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("'{text}' is not a duration such as 30s, 5m, 1h or 7d: {e}"))
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
        assert!(Cron::parse("0 0 * foo *").unwrap_err().contains("month 'foo'"));
        assert!(Cron::parse("0 25 * * *").unwrap_err().starts_with("hour '25'"));
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
        // 2026-03-29 02:30 does not exist in Paris: runs at the first instant after the gap
        // (03:00 CEST).
        let gap = Cron::parse("30 2 * * *").unwrap();
        assert_eq!(
            gap.next_after(ts("2026-03-28T12:00:00Z"), &paris),
            Some(ts("2026-03-29T01:00:00Z"))
        );
        // 2026-10-25 02:30 happens twice in Paris: the schedule runs once.
        let twice = gap.next_after(ts("2026-10-24T12:00:00Z"), &paris).unwrap();
        assert_eq!(twice, ts("2026-10-25T00:30:00Z"));
        assert_eq!(gap.next_after(twice, &paris), Some(ts("2026-10-26T01:30:00Z")));
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
