//! Cron schedules as CronJobs write them: five fields (minute, hour, day of
//! month, month, day of week) with `*`, lists, ranges, steps and names, or one of
//! the `@hourly`-style macros. Day of month and day of week combine as in Vixie
//! cron: when both are restricted, either may match. Times are computed in the
//! CronJob's time zone with jiff.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// Whether day of month / day of week were `*` (unrestricted).
    any_day_of_month: bool,
    any_day_of_week: bool,
}

const MONTHS: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
/// How far ahead a next run is searched before the schedule is called impossible.
const SEARCH_YEARS: i16 = 5;

fn parse_value(s: &str, names: &[&str], offset: u32) -> Result<u32, String> {
    if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
        return Ok(i as u32 + offset);
    }
    s.parse::<u32>().map_err(|_| format!("failed to parse {s:?}: not a number or name"))
}

/// One field as a bit set of allowed values in `min..=max`.
fn parse_field(field: &str, min: u32, max: u32, names: &[&str], name_offset: u32) -> Result<(u64, bool), String> {
    let mut bits = 0u64;
    let mut any = false;
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().map_err(|_| format!("invalid step {s:?}"))?),
            None => (part, 1),
        };
        if step == 0 {
            return Err("a step of 0 is not allowed".into());
        }
        let (low, high) = match range {
            "*" | "?" => {
                any = step == 1 && field.split(',').count() == 1;
                (min, max)
            }
            r => match r.split_once('-') {
                Some((a, b)) => (parse_value(a, names, name_offset)?, parse_value(b, names, name_offset)?),
                None => {
                    let v = parse_value(r, names, name_offset)?;
                    (v, if part.contains('/') { max } else { v })
                }
            },
        };
        if low < min || high > max || low > high {
            return Err(format!("value out of range in {part:?} (allowed {min}-{max})"));
        }
        for v in (low..=high).step_by(step as usize) {
            bits |= 1 << v;
        }
    }
    Ok((bits, any))
}

impl Schedule {
    pub fn parse(spec: &str) -> Result<Self, String> {
        let spec = spec.trim();
        if spec.starts_with("TZ=") || spec.starts_with("CRON_TZ=") {
            return Err("cannot use TZ or CRON_TZ in schedule, use timeZone field instead".into());
        }
        let expanded = match spec {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields.as_slice() else {
            return Err(format!("expected exactly 5 fields, found {}: {spec}", fields.len()));
        };
        let (minutes, _) = parse_field(minute, 0, 59, &[], 0)?;
        let (hours, _) = parse_field(hour, 0, 23, &[], 0)?;
        let (days_of_month, any_day_of_month) = parse_field(dom, 1, 31, &[], 0)?;
        let (months, _) = parse_field(month, 1, 12, &MONTHS, 1)?;
        let (mut days_of_week, any_day_of_week) = parse_field(dow, 0, 7, &DAYS, 0)?;
        if days_of_week & (1 << 7) != 0 {
            days_of_week |= 1; // 7 is Sunday too
        }
        Ok(Self { minutes, hours, days_of_month, months, days_of_week, any_day_of_month, any_day_of_week })
    }

    fn day_matches(&self, date: Date) -> bool {
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        match (self.any_day_of_month, self.any_day_of_week) {
            (false, false) => dom || dow,
            _ => dom && dow,
        }
    }

    /// The first time strictly after `after` that the schedule fires, in `tz`.
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = after.to_zoned(tz.clone()).datetime();
        let mut date = start.date();
        let end = date.checked_add(SEARCH_YEARS.years()).ok()?;
        while date <= end {
            if self.months & (1 << date.month()) != 0 && self.day_matches(date) {
                for hour in 0..24i8 {
                    if self.hours & (1 << hour) == 0 {
                        continue;
                    }
                    for minute in 0..60i8 {
                        if self.minutes & (1 << minute) == 0 {
                            continue;
                        }
                        let candidate = DateTime::from_parts(date, jiff::civil::time(hour, minute, 0, 0));
                        if candidate <= start {
                            continue;
                        }
                        // A time skipped by a DST change resolves to the instant after the gap.
                        if let Ok(zoned) = candidate.to_zoned(tz.clone())
                            && zoned.timestamp() > after {
                                return Some(zoned.timestamp());
                            }
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// The latest time after `since` and at or before `now` that the schedule
    /// fired. Only the last two days are searched: older missed runs never start.
    pub fn most_recent(&self, since: Timestamp, now: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let floor = now.checked_sub(jiff::SignedDuration::from_hours(48)).unwrap_or(since);
        let (mut last, mut t) = (None, since.max(floor));
        while let Some(next) = self.next_after(t, tz).filter(|n| *n <= now) {
            last = Some(next);
            t = next;
        }
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(spec: &str, after: &str) -> String {
        Schedule::parse(spec).unwrap().next_after(at(after), &TimeZone::UTC).unwrap().to_string()
    }

    #[test]
    fn every_minute_and_steps() {
        assert_eq!(next("* * * * *", "2026-01-01T10:00:30Z"), "2026-01-01T10:01:00Z");
        assert_eq!(next("*/15 * * * *", "2026-01-01T10:01:00Z"), "2026-01-01T10:15:00Z");
        assert_eq!(next("5-10/2 * * * *", "2026-01-01T10:06:00Z"), "2026-01-01T10:07:00Z");
        assert_eq!(next("0 9,17 * * *", "2026-01-01T10:00:00Z"), "2026-01-01T17:00:00Z");
    }

    #[test]
    fn names_and_macros() {
        assert_eq!(next("0 0 * * MON", "2026-01-01T00:00:00Z"), "2026-01-05T00:00:00Z"); // 2026-01-01 is a Thursday
        assert_eq!(next("0 0 1 FEB *", "2026-01-01T00:00:00Z"), "2026-02-01T00:00:00Z");
        assert_eq!(next("@hourly", "2026-01-01T10:30:00Z"), "2026-01-01T11:00:00Z");
        assert_eq!(next("@weekly", "2026-01-01T00:00:00Z"), "2026-01-04T00:00:00Z");
        assert_eq!(next("0 0 * * 7", "2026-01-01T00:00:00Z"), "2026-01-04T00:00:00Z");
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_are_restricted() {
        // The 15th, or any Monday.
        assert_eq!(next("0 0 15 * 1", "2026-01-01T00:00:00Z"), "2026-01-05T00:00:00Z");
        assert_eq!(next("0 0 29 2 *", "2026-01-01T00:00:00Z"), "2028-02-29T00:00:00Z");
    }

    #[test]
    fn time_zones_shift_the_firing_instant() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let t = Schedule::parse("0 9 * * *").unwrap().next_after(at("2026-01-01T00:00:00Z"), &tz).unwrap();
        assert_eq!(t.to_string(), "2026-01-01T08:00:00Z");
    }

    #[test]
    fn malformed_schedules_are_errors() {
        for bad in ["", "* * * *", "60 * * * *", "* 24 * * *", "*/0 * * * *", "a b c d e", "TZ=UTC * * * * *", "5-1 * * * *"] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn most_recent_finds_the_last_missed_run() {
        let s = Schedule::parse("*/10 * * * *").unwrap();
        let last = s.most_recent(at("2026-01-01T10:00:00Z"), at("2026-01-01T10:35:00Z"), &TimeZone::UTC);
        assert_eq!(last.unwrap().to_string(), "2026-01-01T10:30:00Z");
        assert_eq!(s.most_recent(at("2026-01-01T10:30:00Z"), at("2026-01-01T10:35:00Z"), &TimeZone::UTC), None);
    }
}
