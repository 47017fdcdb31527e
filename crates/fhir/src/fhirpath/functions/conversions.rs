//! FHIRPath functions: `toX()` and `convertsToX()`.

use super::*;

/// The functions of this family.
pub(super) static FUNCTIONS: &[Function] = &[
    // Conversions
    f("toString", 0, 0, |_, input, _, _| {
        convert(&input, "toString()", |v| v.to_fhirpath_string().map(Value::String))
    }),
    f("convertsToString", 0, 0, |_, input, _, _| {
        converts(&input, "convertsToString()", |v| {
            v.to_fhirpath_string().map(Value::String)
        })
    }),
    f("toInteger", 0, 0, |_, input, _, _| {
        convert(&input, "toInteger()", to_integer)
    }),
    f("convertsToInteger", 0, 0, |_, input, _, _| {
        converts(&input, "convertsToInteger()", to_integer)
    }),
    f("toDecimal", 0, 0, |_, input, _, _| {
        convert(&input, "toDecimal()", to_decimal)
    }),
    f("convertsToDecimal", 0, 0, |_, input, _, _| {
        converts(&input, "convertsToDecimal()", to_decimal)
    }),
    f("toBoolean", 0, 0, |_, input, _, _| {
        convert(&input, "toBoolean()", to_bool)
    }),
    f("convertsToBoolean", 0, 0, |_, input, _, _| {
        converts(&input, "convertsToBoolean()", to_bool)
    }),
    f("toDate", 0, 0, |_, input, _, _| convert(&input, "toDate()", to_date)),
    f("convertsToDate", 0, 0, |_, input, _, _| {
        converts(&input, "convertsToDate()", to_date)
    }),
    f("toDateTime", 0, 0, |_, input, _, _| {
        convert(&input, "toDateTime()", to_datetime)
    }),
    f("convertsToDateTime", 0, 0, |_, input, _, _| {
        converts(&input, "convertsToDateTime()", to_datetime)
    }),
    f("toTime", 0, 0, |_, input, _, _| convert(&input, "toTime()", to_time)),
    f("convertsToTime", 0, 0, |_, input, _, _| {
        converts(&input, "convertsToTime()", to_time)
    }),
    f("toQuantity", 0, 1, |_, input, _, _| {
        convert(&input, "toQuantity()", to_quantity)
    }),
    f("convertsToQuantity", 0, 1, |_, input, _, _| {
        converts(&input, "convertsToQuantity()", to_quantity)
    }),
];

pub(super) fn convert<'a>(
    input: &Collection<'a>,
    what: &str,
    op: fn(&Value<'a>) -> Option<Value<'a>>,
) -> Result<Collection<'a>, FhirPathError> {
    Ok(singleton(input, what)?.and_then(op).into_iter().collect())
}

pub(super) fn converts<'a>(
    input: &Collection<'a>,
    what: &str,
    op: fn(&Value<'a>) -> Option<Value<'a>>,
) -> Result<Collection<'a>, FhirPathError> {
    Ok(singleton(input, what)?
        .map(|v| boolean(op(v).is_some()))
        .unwrap_or_default())
}

pub(super) fn to_integer<'a>(v: &Value<'a>) -> Option<Value<'a>> {
    match v.to_system() {
        Value::Integer(i) => Some(Value::Integer(i)),
        Value::Boolean(b) => Some(Value::Integer(i64::from(b))),
        Value::String(s) => {
            let t = s.strip_prefix('+').unwrap_or(&s);
            (!t.is_empty() && t.trim_start_matches('-').bytes().all(|b| b.is_ascii_digit()))
                .then(|| t.parse().ok().map(Value::Integer))
                .flatten()
        }
        _ => None,
    }
}

pub(super) fn to_decimal<'a>(v: &Value<'a>) -> Option<Value<'a>> {
    match v.to_system() {
        Value::Integer(i) => Some(Value::Decimal(Decimal::from(i))),
        Value::Decimal(d) => Some(Value::Decimal(d)),
        Value::Boolean(b) => Some(Value::Decimal(Decimal::from(i64::from(b)))),
        Value::String(s) => {
            let ok = !s.is_empty()
                && s.trim_start_matches(['+', '-']).split('.').count() <= 2
                && s.trim_start_matches(['+', '-'])
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '.');
            if ok {
                parse_decimal(s.trim_start_matches('+')).map(Value::Decimal)
            } else {
                None
            }
        }
        _ => None,
    }
}

pub(super) fn to_bool<'a>(v: &Value<'a>) -> Option<Value<'a>> {
    match v.to_system() {
        Value::Boolean(b) => Some(Value::Boolean(b)),
        Value::Integer(1) => Some(Value::Boolean(true)),
        Value::Integer(0) => Some(Value::Boolean(false)),
        Value::Decimal(d) if d == Decimal::ONE => Some(Value::Boolean(true)),
        Value::Decimal(d) if d.is_zero() => Some(Value::Boolean(false)),
        Value::String(s) => match s.to_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" | "1.0" => Some(Value::Boolean(true)),
            "false" | "f" | "no" | "n" | "0" | "0.0" => Some(Value::Boolean(false)),
            _ => None,
        },
        _ => None,
    }
}

pub(super) fn to_date<'a>(v: &Value<'a>) -> Option<Value<'a>> {
    match v.to_system() {
        Value::Date(d) => Some(Value::Date(d)),
        Value::DateTime(d) => Some(Value::Date(DateTimeValue {
            precision: d.precision.min(Precision::Day),
            offset_minutes: None,
            ..d
        })),
        Value::String(s) => DateTimeValue::parse(&s).map(|d| {
            Value::Date(DateTimeValue {
                precision: d.precision.min(Precision::Day),
                offset_minutes: None,
                ..d
            })
        }),
        _ => None,
    }
}

pub(super) fn to_datetime<'a>(v: &Value<'a>) -> Option<Value<'a>> {
    match v.to_system() {
        Value::Date(d) | Value::DateTime(d) => Some(Value::DateTime(d)),
        Value::String(s) => DateTimeValue::parse(&s).map(Value::DateTime),
        _ => None,
    }
}

pub(super) fn to_time<'a>(v: &Value<'a>) -> Option<Value<'a>> {
    match v.to_system() {
        Value::Time(t) => Some(Value::Time(t)),
        Value::String(s) => TimeValue::parse(&s).map(Value::Time),
        _ => None,
    }
}

pub(super) fn to_quantity<'a>(v: &Value<'a>) -> Option<Value<'a>> {
    match v {
        Value::Node(n) if n.json.as_object().is_some() => {
            let value = match n.json.get("value")? {
                JsonValue::Number(t) => parse_decimal(t)?,
                _ => return None,
            };
            let unit = n
                .json
                .get("code")
                .or_else(|| n.json.get("unit"))
                .and_then(JsonValue::as_str)
                .unwrap_or("1");
            return Some(Value::Quantity(Quantity {
                value,
                unit: unit.to_string(),
            }));
        }
        _ => {}
    }
    match v.to_system() {
        Value::Quantity(q) => Some(Value::Quantity(q)),
        Value::Boolean(b) => Some(Value::Quantity(Quantity {
            value: Decimal::from(i64::from(b)),
            unit: "1".into(),
        })),
        Value::Integer(i) => Some(Value::Quantity(Quantity {
            value: Decimal::from(i),
            unit: "1".into(),
        })),
        Value::Decimal(d) => Some(Value::Quantity(Quantity {
            value: d,
            unit: "1".into(),
        })),
        Value::String(s) => {
            let (number, unit) = s.split_once(' ').unwrap_or((s.as_str(), "'1'"));
            let value = parse_decimal(number)?;
            let unit = unit.trim();
            let unit = if let Some(u) = unit.strip_prefix('\'').and_then(|u| u.strip_suffix('\'')) {
                u.to_string()
            } else if crate::fhirpath::value::is_calendar_word(unit) {
                unit.to_string()
            } else {
                return None;
            };
            Some(Value::Quantity(Quantity { value, unit }))
        }
        _ => None,
    }
}
