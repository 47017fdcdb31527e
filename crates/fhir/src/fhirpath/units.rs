//! A small UCUM table so quantities in common units compare across units
//! (`4 'g' = 4000 'mg'`, `7 days = 1 'wk'`). Units not listed compare only
//! with themselves.

use rust_decimal::Decimal;

/// What a unit measures, and its factor to the dimension's base unit.
struct UnitDef {
    code: &'static str,
    dimension: &'static str,
    /// Factor as (mantissa, scale): value_in_base = value × mantissa × 10^-scale.
    factor: (i64, u32),
}

const fn u(code: &'static str, dimension: &'static str, mantissa: i64, scale: u32) -> UnitDef {
    UnitDef {
        code,
        dimension,
        factor: (mantissa, scale),
    }
}

static UNITS: &[UnitDef] = &[
    u("kg", "mass", 1000, 0),
    u("g", "mass", 1, 0),
    u("mg", "mass", 1, 3),
    u("ug", "mass", 1, 6),
    u("ng", "mass", 1, 9),
    u("[lb_av]", "mass", 45359237, 5),
    u("[oz_av]", "mass", 28349523125, 9),
    u("km", "length", 1000, 0),
    u("m", "length", 1, 0),
    u("cm", "length", 1, 2),
    u("mm", "length", 1, 3),
    u("um", "length", 1, 6),
    u("[in_i]", "length", 254, 4),
    u("[ft_i]", "length", 3048, 4),
    u("L", "volume", 1, 0),
    u("dL", "volume", 1, 1),
    u("mL", "volume", 1, 3),
    u("uL", "volume", 1, 6),
    u("wk", "time", 604800, 0),
    u("d", "time", 86400, 0),
    u("h", "time", 3600, 0),
    u("min", "time", 60, 0),
    u("s", "time", 1, 0),
    u("ms", "time", 1, 3),
    u("a", "ucum-year", 1, 0),
    u("mo", "ucum-month", 1, 0),
    // Calendar words (FHIRPath durations); weeks and shorter equal their UCUM units.
    u("year", "calendar-month", 12, 0),
    u("month", "calendar-month", 1, 0),
    u("week", "time", 604800, 0),
    u("day", "time", 86400, 0),
    u("hour", "time", 3600, 0),
    u("minute", "time", 60, 0),
    u("second", "time", 1, 0),
    u("millisecond", "time", 1, 3),
];

fn lookup(unit: &str) -> Option<&'static UnitDef> {
    let singular = if unit.len() > 2 && unit.ends_with('s') && unit.chars().all(|c| c.is_ascii_lowercase()) {
        &unit[..unit.len() - 1]
    } else {
        unit
    };
    UNITS.iter().find(|d| d.code == unit || d.code == singular)
}

/// The value in the base unit of its dimension, and the dimension; units not
/// in the table are their own dimension.
pub fn to_base(value: Decimal, unit: &str) -> (Decimal, String) {
    match lookup(unit) {
        Some(def) => (
            value * Decimal::new(def.factor.0, def.factor.1),
            def.dimension.to_string(),
        ),
        None => (value, format!("unit:{unit}")),
    }
}

/// `value` (in `from`) expressed in unit `to`, if both measure the same thing.
pub fn convert(value: Decimal, from: &str, to: &str) -> Option<Decimal> {
    let (base, dim) = to_base(value, from);
    let (one, dim_to) = to_base(Decimal::ONE, to);
    if dim == dim_to { base.checked_div(one) } else { None }
}

/// True if the two units measure the same dimension.
pub fn comparable(a: &str, b: &str) -> bool {
    to_base(Decimal::ONE, a).1 == to_base(Decimal::ONE, b).1
}
