//! FHIR search date semantics: every date value stands for a range set by its
//! precision (`2020` is all of 2020), and each prefix compares the resource's
//! range with the search value's range (R4 search, "date"). Values without a
//! zone are taken as UTC. Ranges are inclusive microsecond instants; an open
//! end of a Period is `i64::MIN` / `i64::MAX`.

use chrono::{Duration, NaiveDate, NaiveDateTime, NaiveTime};

use super::Prefix;
use crate::fhirpath::temporal::{DateTimeValue, Precision};

/// An inclusive range of instants in microseconds since the epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstantRange {
    /// First instant in the range.
    pub low: i64,
    /// Last instant in the range.
    pub high: i64,
}

fn next_after(start: NaiveDateTime, precision: Precision) -> Option<NaiveDateTime> {
    use chrono::Datelike;
    Some(match precision {
        Precision::Year => NaiveDate::from_ymd_opt(start.year() + 1, 1, 1)?.and_time(NaiveTime::MIN),
        Precision::Month => {
            let (y, m) = if start.month() == 12 {
                (start.year() + 1, 1)
            } else {
                (start.year(), start.month() + 1)
            };
            NaiveDate::from_ymd_opt(y, m, 1)?.and_time(NaiveTime::MIN)
        }
        Precision::Day => start.checked_add_signed(Duration::days(1))?,
        Precision::Hour => start.checked_add_signed(Duration::hours(1))?,
        Precision::Minute => start.checked_add_signed(Duration::minutes(1))?,
        Precision::Second => start.checked_add_signed(Duration::seconds(1))?,
        Precision::Millisecond => start.checked_add_signed(Duration::milliseconds(1))?,
    })
}

/// The range a date/dateTime/instant value stands for.
pub fn value_range(value: &DateTimeValue) -> Option<InstantRange> {
    let date = NaiveDate::from_ymd_opt(value.year, value.month, value.day)?;
    let time = NaiveTime::from_hms_milli_opt(value.hour, value.minute, value.second, value.millisecond)?;
    let start = NaiveDateTime::new(date, time);
    let end = next_after(start, value.precision)?;
    let offset = Duration::minutes(i64::from(value.offset_minutes.unwrap_or(0)));
    let low = (start - offset).and_utc().timestamp_micros();
    let high = (end - offset).and_utc().timestamp_micros() - 1;
    Some(InstantRange { low, high })
}

/// The range of a Period (`start`/`end` may be absent: open-ended).
pub fn period_range(start: Option<&DateTimeValue>, end: Option<&DateTimeValue>) -> Option<InstantRange> {
    let low = match start {
        Some(s) => value_range(s)?.low,
        None => i64::MIN,
    };
    let high = match end {
        Some(e) => value_range(e)?.high,
        None => i64::MAX,
    };
    Some(InstantRange { low, high })
}

/// The instants a FHIR `Period` given as text covers (`start`/`end`
/// dateTimes of any precision; a missing bound is open). `None` when a
/// bound given is not a valid dateTime.
pub fn period_text_range(start: Option<&str>, end: Option<&str>) -> Option<InstantRange> {
    let parse = |text: Option<&str>| match text {
        Some(text) => DateTimeValue::parse(text).map(Some),
        None => Some(None),
    };
    period_range(parse(start)?.as_ref(), parse(end)?.as_ref())
}

/// Does a resource value with range `resource` match `prefix` `search`?
pub fn date_matches(prefix: Prefix, resource: InstantRange, search: InstantRange) -> bool {
    let contained = search.low <= resource.low && resource.high <= search.high;
    let overlaps = resource.low <= search.high && search.low <= resource.high;
    match prefix {
        Prefix::Eq => contained,
        Prefix::Ne => !contained,
        Prefix::Gt => resource.high > search.high,
        Prefix::Lt => resource.low < search.low,
        Prefix::Ge => resource.high > search.high || contained,
        Prefix::Le => resource.low < search.low || contained,
        Prefix::Sa => resource.low > search.high,
        Prefix::Eb => resource.high < search.low,
        Prefix::Ap => overlaps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> InstantRange {
        value_range(&DateTimeValue::parse(s).unwrap()).unwrap()
    }

    #[test]
    fn precision_sets_the_range() {
        let year = range("2020");
        assert_eq!(year.low, range("2020-01-01T00:00:00Z").low);
        assert_eq!(year.high, range("2021-01-01T00:00:00Z").low - 1);
        let month = range("2020-02");
        assert_eq!(month.high, range("2020-03-01").low - 1, "leap February");
        let offset = range("2020-01-01T10:00:00+02:00");
        assert_eq!(offset.low, range("2020-01-01T08:00:00Z").low);
        assert_eq!(offset.high - offset.low, 999_999, "a second");
    }

    #[test]
    fn prefixes_compare_ranges() {
        let day = range("2020-01-01T10:00:00Z");
        // eq: inside the search range.
        assert!(date_matches(Prefix::Eq, day, range("2020")));
        assert!(date_matches(Prefix::Eq, day, range("2020-01-01")));
        assert!(
            !date_matches(Prefix::Eq, range("2020"), range("2020-01-01")),
            "a year is not inside a day"
        );
        assert!(date_matches(Prefix::Ne, range("2020"), range("2020-01-01")));
        // ge / lt around a boundary.
        assert!(date_matches(Prefix::Ge, day, range("2020-01-01")));
        assert!(date_matches(Prefix::Ge, range("2021-06-01"), range("2020-01-01")));
        assert!(!date_matches(Prefix::Ge, range("2019-12-31"), range("2020-01-01")));
        assert!(date_matches(Prefix::Lt, range("2019-12-31"), range("2020")));
        assert!(!date_matches(Prefix::Lt, day, range("2020")));
        // A year straddling the search day is both gt and lt (its range extends past both ends).
        assert!(date_matches(Prefix::Gt, range("2020"), range("2020-06-01")));
        assert!(date_matches(Prefix::Lt, range("2020"), range("2020-06-01")));
        assert!(date_matches(Prefix::Sa, range("2021-01-01"), range("2020")));
        assert!(date_matches(Prefix::Eb, range("2019-12-31"), range("2020")));
        assert!(date_matches(Prefix::Ap, range("2020-06"), range("2020")));
    }

    #[test]
    fn periods_from_text_cover_their_bounds_at_their_precision() {
        let year = period_text_range(Some("2001"), Some("2001")).unwrap();
        assert_eq!(year, range("2001"));
        let open = period_text_range(None, Some("2001-05")).unwrap();
        assert_eq!((open.low, open.high), (i64::MIN, range("2001-05").high));
        assert_eq!(
            period_text_range(None, None).map(|r| (r.low, r.high)),
            Some((i64::MIN, i64::MAX))
        );
        assert!(period_text_range(Some("not a date"), None).is_none());
    }

    #[test]
    fn periods_may_be_open_ended() {
        let open = period_range(Some(&DateTimeValue::parse("2019-05-01").unwrap()), None).unwrap();
        assert_eq!(open.high, i64::MAX);
        assert!(
            date_matches(Prefix::Ge, open, range("2030")),
            "an ongoing period reaches any future date"
        );
        assert!(
            !date_matches(Prefix::Eq, open, range("2019")),
            "an open period is inside no finite range"
        );
        let closed = period_range(
            Some(&DateTimeValue::parse("2019-01-01T09:00:00Z").unwrap()),
            Some(&DateTimeValue::parse("2019-01-01T10:00:00Z").unwrap()),
        )
        .unwrap();
        assert!(date_matches(Prefix::Eq, closed, range("2019-01-01")));
        assert!(date_matches(Prefix::Lt, closed, range("2020")) && !date_matches(Prefix::Gt, closed, range("2019")));
    }
}
