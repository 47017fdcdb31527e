//! FHIRPath Date, DateTime and Time values with partial precision.

use std::cmp::Ordering;

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

/// How much of a date/time is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Precision {
    /// `2020`
    Year,
    /// `2020-01`
    Month,
    /// `2020-01-02`
    Day,
    /// `T10`
    Hour,
    /// `T10:30`
    Minute,
    /// `T10:30:45`
    Second,
    /// `T10:30:45.123`
    Millisecond,
}

/// A date or date-time (a Date is a DateTime of at most day precision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateTimeValue {
    /// Components (unknown ones are at their minimum).
    pub year: i32,
    /// 1-12
    pub month: u32,
    /// 1-31
    pub day: u32,
    /// 0-23
    pub hour: u32,
    /// 0-59
    pub minute: u32,
    /// 0-59
    pub second: u32,
    /// 0-999
    pub millisecond: u32,
    /// Known precision.
    pub precision: Precision,
    /// Time-zone offset in minutes, if given.
    pub offset_minutes: Option<i32>,
}

/// A time of day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeValue {
    /// 0-23
    pub hour: u32,
    /// 0-59
    pub minute: u32,
    /// 0-59
    pub second: u32,
    /// 0-999
    pub millisecond: u32,
    /// Known precision (Hour..Millisecond).
    pub precision: Precision,
}

fn digits(s: &str, n: usize) -> Option<u32> {
    (s.len() >= n && s.as_bytes()[..n].iter().all(u8::is_ascii_digit))
        .then(|| s[..n].parse().ok())
        .flatten()
}

fn parse_fraction(s: &str) -> Option<(u32, usize)> {
    let len = s.bytes().take_while(u8::is_ascii_digit).count();
    if len == 0 {
        return None;
    }
    let mut ms = 0;
    for (i, b) in s.bytes().take(3).enumerate().take(len) {
        ms += u32::from(b - b'0') * 10u32.pow(2 - i as u32);
    }
    Some((ms, len))
}

/// Parses `hh[:mm[:ss[.fff]]]`; returns the time and the rest of the text.
fn parse_time_part(s: &str) -> Option<(TimeValue, &str)> {
    let hour = digits(s, 2)?;
    let mut t = TimeValue {
        hour,
        minute: 0,
        second: 0,
        millisecond: 0,
        precision: Precision::Hour,
    };
    let mut rest = &s[2..];
    if let Some(r) = rest.strip_prefix(':') {
        t.minute = digits(r, 2)?;
        t.precision = Precision::Minute;
        rest = &r[2..];
        if let Some(r) = rest.strip_prefix(':') {
            t.second = digits(r, 2)?;
            t.precision = Precision::Second;
            rest = &r[2..];
            if let Some(r) = rest.strip_prefix('.') {
                let (ms, len) = parse_fraction(r)?;
                t.millisecond = ms;
                t.precision = Precision::Millisecond;
                rest = &r[len..];
            }
        }
    }
    (t.hour < 24 && t.minute < 60 && t.second < 60).then_some((t, rest))
}

impl TimeValue {
    /// Parses `hh[:mm[:ss[.fff]]]`.
    pub fn parse(s: &str) -> Option<Self> {
        match parse_time_part(s)? {
            (t, "") => Some(t),
            _ => None,
        }
    }

    /// FHIRPath comparison: `None` when the precisions differ and the known
    /// parts are equal.
    pub fn compare(&self, other: &Self) -> Option<Ordering> {
        let common = self.precision.min(other.precision).min(Precision::Second);
        let parts = |t: &Self| [t.hour, t.minute, t.second * 1000 + t.millisecond];
        let (a, b) = (parts(self), parts(other));
        let n = match common {
            Precision::Hour => 1,
            Precision::Minute => 2,
            _ => 3,
        };
        for i in 0..n {
            match a[i].cmp(&b[i]) {
                Ordering::Equal => {}
                ord => return Some(ord),
            }
        }
        let same = |p: Precision| if p >= Precision::Second { Precision::Second } else { p };
        (same(self.precision) == same(other.precision)).then_some(Ordering::Equal)
    }

    /// Lexical form at its precision.
    pub fn format(&self) -> String {
        let mut s = format!("{:02}", self.hour);
        if self.precision >= Precision::Minute {
            s += &format!(":{:02}", self.minute);
        }
        if self.precision >= Precision::Second {
            s += &format!(":{:02}", self.second);
        }
        if self.precision >= Precision::Millisecond {
            s += &format!(".{:03}", self.millisecond);
        }
        s
    }

    /// The earliest time this partial time can mean, at millisecond precision.
    pub fn low_boundary(&self) -> Self {
        Self {
            precision: Precision::Millisecond,
            ..self.clone()
        }
    }

    /// The latest time this partial time can mean, at millisecond precision.
    pub fn high_boundary(&self) -> Self {
        let mut t = Self {
            precision: Precision::Millisecond,
            ..self.clone()
        };
        if self.precision < Precision::Minute {
            t.minute = 59;
        }
        if self.precision < Precision::Second {
            t.second = 59;
        }
        if self.precision < Precision::Millisecond {
            t.millisecond = 999;
        }
        t
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    };
    next.and_then(|n| n.pred_opt()).map_or(31, |d| d.day())
}

impl DateTimeValue {
    /// January 1st of `year`, at year precision, without a zone.
    pub fn start_of_year(year: i32) -> Self {
        DateTimeValue {
            year,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            millisecond: 0,
            precision: Precision::Year,
            offset_minutes: None,
        }
    }

    /// Parses a FHIR date or dateTime (`2020`, `2020-01-02T10:30:00.5+02:00`);
    /// also a FHIRPath literal body with a trailing `T` (`2020-01-02T`).
    pub fn parse(s: &str) -> Option<Self> {
        let mut v = Self::start_of_year(digits(s, 4)? as i32);
        let mut rest = &s[4..];
        if let Some(r) = rest.strip_prefix('-') {
            v.month = digits(r, 2)?;
            v.precision = Precision::Month;
            rest = &r[2..];
            if let Some(r) = rest.strip_prefix('-') {
                v.day = digits(r, 2)?;
                v.precision = Precision::Day;
                rest = &r[2..];
            }
        }
        if !(1..=12).contains(&v.month) || v.day < 1 || v.day > days_in_month(v.year, v.month) {
            return None;
        }
        if let Some(r) = rest.strip_prefix('T') {
            if r.is_empty() {
                return Some(v);
            }
            let (t, r) = parse_time_part(r)?;
            v.hour = t.hour;
            v.minute = t.minute;
            v.second = t.second;
            v.millisecond = t.millisecond;
            v.precision = t.precision;
            rest = r;
        }
        if rest == "Z" {
            v.offset_minutes = Some(0);
        } else if let Some(sign) = rest.chars().next().filter(|c| *c == '+' || *c == '-') {
            let r = &rest[1..];
            let h = digits(r, 2)? as i32;
            let m = r.get(3..).and_then(|m| digits(m, 2)).unwrap_or(0) as i32;
            let total = h * 60 + m;
            v.offset_minutes = Some(if sign == '-' { -total } else { total });
        } else if !rest.is_empty() {
            return None;
        }
        Some(v)
    }

    /// The date part only (precision capped at day).
    pub fn is_date_only(&self) -> bool {
        self.precision <= Precision::Day
    }

    fn naive(&self) -> Option<NaiveDateTime> {
        let date = NaiveDate::from_ymd_opt(self.year, self.month, self.day)?;
        let time = NaiveTime::from_hms_milli_opt(self.hour, self.minute, self.second, self.millisecond)?;
        Some(NaiveDateTime::new(date, time))
    }

    fn from_naive(n: NaiveDateTime, precision: Precision, offset_minutes: Option<i32>) -> Self {
        Self {
            year: n.year(),
            month: n.month(),
            day: n.day(),
            hour: n.hour(),
            minute: n.minute(),
            second: n.second(),
            millisecond: n.nanosecond() / 1_000_000,
            precision,
            offset_minutes,
        }
    }

    /// This value shifted to UTC (when it has a time and an offset).
    fn normalized(&self) -> Self {
        match (self.offset_minutes, self.precision >= Precision::Hour, self.naive()) {
            (Some(offset), true, Some(n)) if offset != 0 => {
                Self::from_naive(n - Duration::minutes(i64::from(offset)), self.precision, Some(0))
            }
            _ => self.clone(),
        }
    }

    /// FHIRPath comparison: `None` when precisions differ and the known parts
    /// are equal (the answer is unknown).
    pub fn compare(&self, other: &Self) -> Option<Ordering> {
        // With a time of day, a value with a zone and one without cannot be ordered.
        if self.precision >= Precision::Hour
            && other.precision >= Precision::Hour
            && self.offset_minutes.is_some() != other.offset_minutes.is_some()
        {
            return None;
        }
        let (a, b) = (self.normalized(), other.normalized());
        let cap = |p: Precision| if p >= Precision::Second { Precision::Second } else { p };
        let (pa, pb) = (cap(a.precision), cap(b.precision));
        let parts = |v: &Self| {
            [
                v.year as i64,
                v.month.into(),
                v.day.into(),
                v.hour.into(),
                v.minute.into(),
                (v.second * 1000 + v.millisecond).into(),
            ]
        };
        let (xa, xb) = (parts(&a), parts(&b));
        let n = pa.min(pb) as usize + 1;
        for i in 0..n.min(6) {
            match xa[i].cmp(&xb[i]) {
                Ordering::Equal => {}
                ord => return Some(ord),
            }
        }
        (pa == pb).then_some(Ordering::Equal)
    }

    /// Lexical form at its precision (FHIR style).
    pub fn format(&self) -> String {
        let mut s = format!("{:04}", self.year);
        if self.precision >= Precision::Month {
            s += &format!("-{:02}", self.month);
        }
        if self.precision >= Precision::Day {
            s += &format!("-{:02}", self.day);
        }
        if self.precision >= Precision::Hour {
            s.push('T');
            s += &self.time_of_day().format();
            match self.offset_minutes {
                Some(0) => s.push('Z'),
                Some(offset) => s += &Self::format_offset(offset),
                None => {}
            }
        }
        s
    }

    /// The time-of-day part (precision capped at hour..millisecond).
    pub fn time_of_day(&self) -> TimeValue {
        TimeValue {
            hour: self.hour,
            minute: self.minute,
            second: self.second,
            millisecond: self.millisecond,
            precision: self.precision.max(Precision::Hour),
        }
    }

    fn format_offset(offset: i32) -> String {
        let sign = if offset < 0 { '-' } else { '+' };
        format!("{sign}{:02}:{:02}", offset.abs() / 60, offset.abs() % 60)
    }

    /// The earliest instant this value can mean, as a millisecond dateTime
    /// (without an offset, the earliest zone: +14:00).
    pub fn low_boundary_datetime(&self) -> String {
        let v = Self {
            precision: Precision::Millisecond,
            ..self.clone()
        };
        let base = Self {
            offset_minutes: None,
            ..v.clone()
        }
        .format();
        format!("{base}{}", Self::format_offset(self.offset_minutes.unwrap_or(14 * 60)))
    }

    /// The latest instant this value can mean (without an offset, the latest
    /// zone: -12:00).
    pub fn high_boundary_datetime(&self) -> String {
        let mut v = Self {
            precision: Precision::Millisecond,
            offset_minutes: None,
            ..self.clone()
        };
        if self.precision < Precision::Month {
            v.month = 12;
        }
        if self.precision < Precision::Day {
            v.day = days_in_month(v.year, v.month);
        }
        if self.precision < Precision::Hour {
            v.hour = 23;
        }
        if self.precision < Precision::Minute {
            v.minute = 59;
        }
        if self.precision < Precision::Second {
            v.second = 59;
        }
        if self.precision < Precision::Millisecond {
            v.millisecond = 999;
        }
        format!(
            "{}{}",
            v.format(),
            Self::format_offset(self.offset_minutes.unwrap_or(-12 * 60))
        )
    }

    /// The earliest date (day precision).
    pub fn low_boundary_date(&self) -> String {
        Self {
            precision: Precision::Day,
            ..self.clone()
        }
        .format()
    }

    /// The latest date (day precision).
    pub fn high_boundary_date(&self) -> String {
        let mut v = Self {
            precision: Precision::Day,
            ..self.clone()
        };
        if self.precision < Precision::Month {
            v.month = 12;
        }
        if self.precision < Precision::Day {
            v.day = days_in_month(v.year, v.month);
        }
        v.format()
    }

    /// Adds a calendar duration (`unit` a calendar word or the UCUM `wk`, `d`,
    /// `h`, `min`, `s`, `ms`; UCUM `a` and `mo` are average lengths, not
    /// calendar units); `None` when the unit is not a duration.
    pub fn add(&self, amount: i64, unit: &str) -> Option<Self> {
        let unit = if unit == "ms" || unit == "s" {
            unit
        } else {
            unit.trim_end_matches('s')
        };
        let mut v = self.clone();
        match unit {
            "year" => {
                v.year = v.year.checked_add(i32::try_from(amount).ok()?)?;
                v.day = v.day.min(days_in_month(v.year, v.month));
                return Some(v);
            }
            "month" => {
                let months = i64::from(v.year) * 12 + i64::from(v.month) - 1 + amount;
                v.year = i32::try_from(months.div_euclid(12)).ok()?;
                v.month = (months.rem_euclid(12) + 1) as u32;
                v.day = v.day.min(days_in_month(v.year, v.month));
                return Some(v);
            }
            _ => {}
        }
        let duration = match unit {
            "week" | "wk" => Duration::try_weeks(amount)?,
            "day" | "d" => Duration::try_days(amount)?,
            "hour" | "h" => Duration::try_hours(amount)?,
            "minute" | "min" => Duration::try_minutes(amount)?,
            "second" | "s" => Duration::try_seconds(amount)?,
            "millisecond" | "ms" => Duration::try_milliseconds(amount)?,
            _ => return None,
        };
        let n = self.naive()?.checked_add_signed(duration)?;
        Some(Self::from_naive(n, self.precision, self.offset_minutes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_compares() {
        let a = DateTimeValue::parse("2020-01-02T10:00:00+02:00").unwrap();
        let b = DateTimeValue::parse("2020-01-02T08:00:00Z").unwrap();
        assert_eq!(a.compare(&b), Some(Ordering::Equal));
        let y = DateTimeValue::parse("2020").unwrap();
        assert_eq!(y.compare(&DateTimeValue::parse("2020-05").unwrap()), None);
        assert_eq!(
            y.compare(&DateTimeValue::parse("2021-05").unwrap()),
            Some(Ordering::Less)
        );
        assert!(DateTimeValue::parse("2020-02-30").is_none());
        assert_eq!(
            DateTimeValue::parse("2012-04-15T15:30:31")
                .unwrap()
                .compare(&DateTimeValue::parse("2012-04-15T15:30:31.0").unwrap()),
            Some(Ordering::Equal)
        );
    }

    #[test]
    fn boundaries() {
        let d = DateTimeValue::parse("2010-10-10").unwrap();
        assert_eq!(d.low_boundary_datetime(), "2010-10-10T00:00:00.000+14:00");
        assert_eq!(d.high_boundary_datetime(), "2010-10-10T23:59:59.999-12:00");
        let m = DateTimeValue::parse("1970-06").unwrap();
        assert_eq!(m.low_boundary_date(), "1970-06-01");
        assert_eq!(m.high_boundary_date(), "1970-06-30");
        let t = TimeValue::parse("12:34:00").unwrap();
        assert_eq!(t.low_boundary().format(), "12:34:00.000");
        assert_eq!(t.high_boundary().format(), "12:34:00.999");
    }
}
