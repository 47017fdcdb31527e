//! Filters on index columns for one search value (R4 search semantics per
//! parameter type). Plain DataFusion expressions only, so Parquet statistics
//! can prune on them and a distributed engine can run them unchanged.

use datafusion::common::ScalarValue;
use datafusion::logical_expr::expr::Like;
use datafusion::logical_expr::{Expr, col, lit};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use super::CohortError;
use crate::fhir::parse_reference;
use crate::index::{OPEN_HIGH, OPEN_LOW};
use crate::search::extract::fold;
use crate::search::range::value_range;
use crate::search::{Modifier, Prefix, SearchValue};

fn unsupported(param: &str, what: &str) -> CohortError {
    CohortError::Unsupported {
        param: param.to_string(),
        reason: what.to_string(),
    }
}

fn timestamp(micros: i64) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(
        Some(micros.clamp(OPEN_LOW, OPEN_HIGH)),
        Some("UTC".into()),
    ))
}

/// `column LIKE pattern` with `\` escaping.
fn like(column: &str, pattern: String) -> Expr {
    Expr::Like(Like::new(
        false,
        Box::new(col(column)),
        Box::new(lit(pattern)),
        Some('\\'),
        false,
    ))
}

/// `text` with LIKE's wildcards escaped.
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The filter for a token value on the token index.
pub fn token(param: &str, modifier: Option<&Modifier>, value: &SearchValue) -> Result<Expr, CohortError> {
    match (modifier, value) {
        (Some(Modifier::Text), SearchValue::Token { code: Some(text), .. }) => {
            Ok(like("text", format!("{}%", escape_like(&fold(text)))))
        }
        (Some(Modifier::Below | Modifier::Above), _) => Err(unsupported(
            param,
            ":below/:above on tokens need a terminology server (code system hierarchies)",
        )),
        (_, SearchValue::OfType { system, code, value }) => {
            let type_system = if system.is_empty() {
                col("type_system").is_null()
            } else {
                col("type_system").eq(lit(system.as_str()))
            };
            Ok(conjunction(vec![
                col("code").eq(lit(value.as_str())),
                type_system,
                col("type_code").eq(lit(code.as_str())),
            ]))
        }
        (Some(Modifier::OfType), _) => Err(unsupported(param, ":of-type takes type-system|type-code|value")),
        (_, SearchValue::Token { system, code }) => {
            let mut parts = Vec::new();
            match system.as_deref() {
                None => {}
                Some("") => parts.push(col("system").is_null()),
                Some(s) => parts.push(col("system").eq(lit(s))),
            }
            if let Some(code) = code {
                parts.push(col("code").eq(lit(code.as_str())));
            }
            Ok(conjunction(parts))
        }
        _ => Err(unsupported(param, "value is not a token")),
    }
}

/// The filter for a date value on the date index (`low`/`high` are the
/// resource value's range, the search value's precision sets its range).
pub fn date(param: &str, value: &SearchValue) -> Result<Expr, CohortError> {
    let SearchValue::Date { prefix, value } = value else {
        return Err(unsupported(param, "value is not a date"));
    };
    let Some(search) = value_range(value) else {
        return Err(CohortError::Unsupported {
            param: param.to_string(),
            reason: "the date is out of range".into(),
        });
    };
    let (low, high) = (|| col("low"), || col("high"));
    let contained = || {
        low()
            .gt_eq(timestamp(search.low))
            .and(high().lt_eq(timestamp(search.high)))
    };
    Ok(match prefix {
        Prefix::Eq => contained(),
        Prefix::Ne => !contained(),
        Prefix::Gt => high().gt(timestamp(search.high)),
        Prefix::Lt => low().lt(timestamp(search.low)),
        Prefix::Ge => high().gt(timestamp(search.high)).or(contained()),
        Prefix::Le => low().lt(timestamp(search.low)).or(contained()),
        Prefix::Sa => low().gt(timestamp(search.high)),
        Prefix::Eb => high().lt(timestamp(search.low)),
        Prefix::Ap => low()
            .lt_eq(timestamp(search.high))
            .and(high().gt_eq(timestamp(search.low))),
    })
}

/// The half-width of a decimal's precision (`6.5` → 0.05), exact. A value
/// with the most decimal places `Decimal` holds (28) gets 5e-28: one place
/// more is not representable (and far below what f64 can tell apart).
fn half_unit(value: &Decimal) -> Decimal {
    Decimal::new(5, (value.scale() + 1).min(Decimal::MAX_SCALE))
}

/// A decimal as the index stores it (`index::buffer` converts the same way),
/// so a stored value on a range's bound compares equal to it.
fn to_f64(value: Decimal) -> f64 {
    value.to_f64().unwrap_or(f64::NAN)
}

/// The filter for a number compared with `prefix` (R4: `eq` and `ne` use the
/// value's precision, `sa`/`eb` take values wholly above/below it, `ap`
/// ±10 %).
fn compare_number(column: &str, prefix: Prefix, value: &Decimal) -> Expr {
    let v = to_f64(*value);
    let c = col(column);
    // Bounds computed in decimal: in f64, 1.1 + 0.05 is 1.1500000000000001,
    // which would put a stored 1.15 inside `eq1.1`'s range.
    let (lo, hi) = match (value.checked_sub(half_unit(value)), value.checked_add(half_unit(value))) {
        (Some(lo), Some(hi)) => (to_f64(lo), to_f64(hi)),
        _ => (v, v),
    };
    // A range narrower than f64 can resolve (28 decimal places, or bounds
    // beyond `Decimal`) is the stored value itself.
    let point = lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less);
    let within = || {
        if point {
            c.clone().eq(lit(v))
        } else {
            c.clone().gt_eq(lit(lo)).and(c.clone().lt(lit(hi)))
        }
    };
    match prefix {
        Prefix::Eq => within(),
        Prefix::Ne => !within(),
        Prefix::Gt => c.gt(lit(v)),
        Prefix::Lt => c.lt(lit(v)),
        Prefix::Sa if point => c.gt(lit(v)),
        Prefix::Sa => c.gt_eq(lit(hi)),
        Prefix::Eb if point => c.lt(lit(v)),
        Prefix::Eb => c.lt(lit(lo)),
        Prefix::Ge => c.gt_eq(lit(v)),
        Prefix::Le => c.lt_eq(lit(v)),
        Prefix::Ap => {
            let margin = (v * 0.1).abs();
            c.clone().gt_eq(lit(v - margin)).and(c.lt_eq(lit(v + margin)))
        }
    }
}

/// The filter for a number value on the number index.
pub fn number(param: &str, value: &SearchValue) -> Result<Expr, CohortError> {
    match value {
        SearchValue::Number { prefix, value } => Ok(compare_number("value", *prefix, value)),
        _ => Err(unsupported(param, "value is not a number")),
    }
}

/// The filter for a quantity value on the quantity index: with a system, its
/// code must match; without one, the code matches `code` or `unit`.
pub fn quantity(param: &str, value: &SearchValue) -> Result<Expr, CohortError> {
    let SearchValue::Quantity {
        prefix,
        value,
        system,
        code,
    } = value
    else {
        return Err(unsupported(param, "value is not a quantity"));
    };
    let mut parts = vec![compare_number("value", *prefix, value)];
    match (system, code) {
        (Some(system), Some(code)) => {
            parts.push(col("system").eq(lit(system.as_str())));
            parts.push(col("code").eq(lit(code.as_str())));
        }
        (Some(system), None) => parts.push(col("system").eq(lit(system.as_str()))),
        (None, Some(code)) => parts.push(
            col("code")
                .eq(lit(code.as_str()))
                .or(col("unit").eq(lit(code.as_str()))),
        ),
        (None, None) => {}
    }
    Ok(conjunction(parts))
}

/// The filter for a string value: case- and accent-insensitive prefix;
/// `:exact` the whole value as stored; `:contains` a folded substring.
pub fn string(param: &str, modifier: Option<&Modifier>, value: &SearchValue) -> Result<Expr, CohortError> {
    let SearchValue::String(text) = value else {
        return Err(unsupported(param, "value is not a string"));
    };
    Ok(match modifier {
        Some(Modifier::Exact) => col("exact").eq(lit(text.as_str())),
        Some(Modifier::Contains) => like("folded", format!("%{}%", escape_like(&fold(text)))),
        _ => like("folded", format!("{}%", escape_like(&fold(text)))),
    })
}

/// The filter for a reference value: the target id, and the target type when
/// the value or a `:Type` modifier names one (a stored reference without a
/// type, such as `urn:uuid:…`, matches any type).
pub fn reference(param: &str, modifier: Option<&Modifier>, value: &SearchValue) -> Result<Expr, CohortError> {
    let SearchValue::Reference { resource_type, id } = value else {
        return Err(unsupported(param, "value is not a reference"));
    };
    if modifier == Some(&Modifier::Identifier) {
        return Err(unsupported(
            param,
            ":identifier is not indexed yet (the index keeps reference targets, not identifiers)",
        ));
    }
    let (mut target_type, mut target_id) = (resource_type.clone(), id.clone());
    if target_type.is_none()
        && let Some(parsed) = parse_reference(id)
        && parsed.resource_type.is_some()
    {
        target_type = parsed.resource_type.map(str::to_string);
        target_id = parsed.id.to_string();
    }
    if let Some(Modifier::TargetType(t)) = modifier {
        target_type = Some((*t).to_string());
    }
    let mut expr = col("target_id").eq(lit(target_id));
    if let Some(t) = target_type {
        expr = expr.and(col("target_type").eq(lit(t)).or(col("target_type").is_null()));
    }
    Ok(expr)
}

/// The filter for a uri value (`:below` prefix, `:above` the stored value is
/// a prefix of the search value).
pub fn uri(param: &str, modifier: Option<&Modifier>, value: &SearchValue) -> Result<Expr, CohortError> {
    let SearchValue::Uri(text) = value else {
        return Err(unsupported(param, "value is not a uri"));
    };
    Ok(match modifier {
        Some(Modifier::Below) => like("uri", format!("{}%", escape_like(text))),
        Some(Modifier::Above) => datafusion::functions::string::expr_fn::starts_with(lit(text.as_str()), col("uri")),
        _ => col("uri").eq(lit(text.as_str())),
    })
}

/// `a AND b AND …` (`true` when empty).
pub fn conjunction(parts: Vec<Expr>) -> Expr {
    parts.into_iter().reduce(Expr::and).unwrap_or_else(|| lit(true))
}

/// `a OR b OR …` (`false` when empty).
pub fn disjunction(parts: Vec<Expr>) -> Expr {
    parts.into_iter().reduce(Expr::or).unwrap_or_else(|| lit(false))
}
