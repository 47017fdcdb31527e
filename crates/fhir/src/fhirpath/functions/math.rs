//! FHIRPath functions: math (`abs`, `round`, `sqrt`, …) and precision (`lowBoundary`, `highBoundary`, `precision`).

use super::*;

/// The functions of this family.
pub(super) static FUNCTIONS: &[Function] = &[
    // Math
    f("abs", 0, 0, |_, input, _, _| {
        math(&input, "abs()", |d| Some(d.abs()), true)
    }),
    f("ceiling", 0, 0, |_, input, _, _| {
        math_int(&input, "ceiling()", |d| d.ceil())
    }),
    f("floor", 0, 0, |_, input, _, _| {
        math_int(&input, "floor()", |d| d.floor())
    }),
    f("truncate", 0, 0, |_, input, _, _| {
        math_int(&input, "truncate()", |d| d.trunc())
    }),
    f("round", 0, 1, |e, input, args, scope| {
        let places = match args.first() {
            Some(a) => singleton_integer(&e.eval(a, scope)?, "round()")?.unwrap_or(0),
            None => 0,
        };
        math(&input, "round()", |d| Some(d.round_dp(places.max(0) as u32)), false)
    }),
    f("sqrt", 0, 0, |_, input, _, _| {
        math(
            &input,
            "sqrt()",
            |d| float(d).filter(|f| *f >= 0.0).and_then(|f| Decimal::from_f64(f.sqrt())),
            false,
        )
    }),
    f("exp", 0, 0, |_, input, _, _| {
        math(
            &input,
            "exp()",
            |d| float(d).and_then(|f| Decimal::from_f64(f.exp())),
            false,
        )
    }),
    f("ln", 0, 0, |_, input, _, _| {
        math(
            &input,
            "ln()",
            |d| float(d).filter(|f| *f > 0.0).and_then(|f| Decimal::from_f64(f.ln())),
            false,
        )
    }),
    f("log", 1, 1, |e, input, args, scope| {
        let base = e.eval(&args[0], scope)?;
        let Some(base) = singleton(&base, "log()")?.and_then(|b| decimal_of(&b.to_system())) else {
            return Ok(Vec::new());
        };
        math(
            &input,
            "log()",
            |d| Some(float(d)?.ln() / float(base)?.ln()).and_then(Decimal::from_f64),
            false,
        )
    }),
    f("power", 1, 1, |e, input, args, scope| {
        let exponent = e.eval(&args[0], scope)?;
        let (Some(base), Some(exp)) = (
            singleton(&input, "power()")?.map(Value::to_system),
            singleton(&exponent, "power()")?.map(Value::to_system),
        ) else {
            return Ok(Vec::new());
        };
        if let (Value::Integer(b), Value::Integer(x)) = (&base, &exp)
            && *x >= 0
        {
            return Ok(u32::try_from(*x)
                .ok()
                .and_then(|x| b.checked_pow(x))
                .map(Value::Integer)
                .into_iter()
                .collect());
        }
        let (Some(b), Some(x)) = (decimal_of(&base).and_then(float), decimal_of(&exp).and_then(float)) else {
            return Ok(Vec::new());
        };
        let r = b.powf(x);
        Ok(if r.is_finite() {
            Decimal::from_f64(r).map(Value::Decimal).into_iter().collect()
        } else {
            Vec::new()
        })
    }),
];

pub(super) fn decimal_of(v: &Value<'_>) -> Option<Decimal> {
    match v {
        Value::Integer(i) => Some(Decimal::from(*i)),
        Value::Decimal(d) => Some(*d),
        _ => None,
    }
}

pub(super) fn float(d: Decimal) -> Option<f64> {
    d.to_f64()
}

pub(super) fn math<'a>(
    input: &Collection<'a>,
    what: &str,
    op: impl Fn(Decimal) -> Option<Decimal>,
    keep_integer: bool,
) -> Result<Collection<'a>, FhirPathError> {
    let Some(v) = singleton(input, what)?.map(Value::to_system) else {
        return Ok(Vec::new());
    };
    match v {
        Value::Integer(i) if keep_integer => Ok(i.checked_abs().map(Value::Integer).into_iter().collect()),
        Value::Quantity(q) => Ok(op(q.value)
            .map(|value| Value::Quantity(Quantity { value, unit: q.unit }))
            .into_iter()
            .collect()),
        other => {
            let d = decimal_of(&other).ok_or_else(|| eval_error(None, format!("{what} expects a number")))?;
            Ok(op(d).map(|d| Value::Decimal(d.normalize())).into_iter().collect())
        }
    }
}

pub(super) fn math_int<'a>(
    input: &Collection<'a>,
    what: &str,
    op: impl Fn(Decimal) -> Decimal,
) -> Result<Collection<'a>, FhirPathError> {
    let Some(v) = singleton(input, what)?.map(Value::to_system) else {
        return Ok(Vec::new());
    };
    let d = decimal_of(&v).ok_or_else(|| eval_error(None, format!("{what} expects a number")))?;
    Ok(op(d).to_i64().map(Value::Integer).into_iter().collect())
}

/// Rounds `d` to `scale` digits toward −∞ (`low`) or +∞.
pub(super) fn round_to(d: Decimal, scale: u32, low: bool) -> Decimal {
    use rust_decimal::RoundingStrategy;
    let mut r = d.round_dp_with_strategy(
        scale,
        if low {
            RoundingStrategy::ToNegativeInfinity
        } else {
            RoundingStrategy::ToPositiveInfinity
        },
    );
    r.rescale(scale);
    r
}

/// `lowBoundary([precision])` / `highBoundary([precision])`: the range a value
/// of limited precision stands for (decimals ± half a unit of their last
/// digit, default 8 digits; dates and times to the ends of their precision).
pub(super) fn boundary<'a>(
    input: &Collection<'a>,
    low: bool,
    precision: Option<i64>,
) -> Result<Collection<'a>, FhirPathError> {
    let Some(v) = singleton(input, "boundary")? else {
        return Ok(Vec::new());
    };
    let decimal_boundary = |d: Decimal| -> Option<Decimal> {
        let digits = precision.unwrap_or(8);
        if !(0..=28).contains(&digits) {
            return None;
        }
        let half = Decimal::try_new(5, d.scale() + 1).ok()?;
        let edge = if low {
            d.checked_sub(half)?
        } else {
            d.checked_add(half)?
        };
        Some(round_to(edge, digits as u32, low))
    };
    Ok(match v.to_system() {
        Value::Decimal(d) => decimal_boundary(d).map(Value::Decimal).into_iter().collect(),
        Value::Integer(i) => decimal_boundary(Decimal::from(i))
            .map(Value::Decimal)
            .into_iter()
            .collect(),
        Value::Quantity(q) => decimal_boundary(q.value)
            .map(|value| Value::Quantity(Quantity { value, unit: q.unit }))
            .into_iter()
            .collect(),
        Value::Date(d) => {
            let target = match precision {
                Some(p) => match date_precision(p) {
                    Some(t) if t <= Precision::Day => t,
                    _ => return Ok(Vec::new()),
                },
                None => Precision::Day,
            };
            let text = if low {
                d.low_boundary_date()
            } else {
                d.high_boundary_date()
            };
            DateTimeValue::parse(&text)
                .map(|full| {
                    Value::Date(DateTimeValue {
                        precision: target,
                        ..full
                    })
                })
                .into_iter()
                .collect()
        }
        Value::DateTime(d) => {
            let target = match precision {
                Some(p) => match date_precision(p) {
                    Some(t) => t,
                    None => return Ok(Vec::new()),
                },
                None => Precision::Millisecond,
            };
            let text = if low {
                d.low_boundary_datetime()
            } else {
                d.high_boundary_datetime()
            };
            DateTimeValue::parse(&text)
                .map(|full| {
                    let offset = if target >= Precision::Hour {
                        full.offset_minutes
                    } else {
                        None
                    };
                    Value::DateTime(DateTimeValue {
                        precision: target,
                        offset_minutes: offset,
                        ..full
                    })
                })
                .into_iter()
                .collect()
        }
        Value::Time(t) => {
            let target = match precision {
                Some(2) => Precision::Hour,
                Some(4) => Precision::Minute,
                Some(6) => Precision::Second,
                Some(9) | None => Precision::Millisecond,
                Some(_) => return Ok(Vec::new()),
            };
            let full = if low { t.low_boundary() } else { t.high_boundary() };
            vec![Value::Time(TimeValue {
                precision: target,
                ..full
            })]
        }
        _ => Vec::new(),
    })
}

pub(super) fn date_digits(p: Precision) -> i64 {
    match p {
        Precision::Year => 4,
        Precision::Month => 6,
        Precision::Day => 8,
        Precision::Hour => 10,
        Precision::Minute => 12,
        Precision::Second => 14,
        Precision::Millisecond => 17,
    }
}

pub(super) fn time_digits(p: Precision) -> i64 {
    match p {
        Precision::Hour => 2,
        Precision::Minute => 4,
        Precision::Second => 6,
        _ => 9,
    }
}

pub(super) fn date_precision(digits: i64) -> Option<Precision> {
    Some(match digits {
        4 => Precision::Year,
        6 => Precision::Month,
        8 => Precision::Day,
        10 => Precision::Hour,
        12 => Precision::Minute,
        14 => Precision::Second,
        17 => Precision::Millisecond,
        _ => return None,
    })
}
