//! FHIRPath values: nodes of the resource being evaluated, and system values
//! computed by expressions.

use std::cmp::Ordering;

use rust_decimal::Decimal;

use super::temporal::{DateTimeValue, TimeValue};
use super::units;
use crate::fhir::model::FhirModel;
use crate::json::JsonValue;

/// A node of the input resource with its FHIR type (when the model knows it).
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    /// The JSON value.
    pub json: &'a JsonValue<'a>,
    /// FHIR type code (`HumanName`, `date`, `Patient`, `BackboneElement`).
    pub fhir_type: Option<&'static str>,
    /// Where its children are defined (a type name or a backbone path).
    pub children_owner: Option<&'static str>,
    /// For a primitive, its `_name` companion object (`id`, `extension`).
    pub primitive_element: Option<&'a JsonValue<'a>>,
}

/// A quantity (value + unit).
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    /// The amount.
    pub value: Decimal,
    /// UCUM code or calendar word.
    pub unit: String,
}

/// One item of a FHIRPath collection.
#[derive(Debug, Clone)]
pub enum Value<'a> {
    /// A node of the resource.
    Node(Node<'a>),
    /// System.Boolean
    Boolean(bool),
    /// System.Integer
    Integer(i64),
    /// System.Decimal (scale kept: `1.0` stays `1.0`)
    Decimal(Decimal),
    /// System.String
    String(String),
    /// System.Date
    Date(DateTimeValue),
    /// System.DateTime
    DateTime(DateTimeValue),
    /// System.Time
    Time(TimeValue),
    /// System.Quantity
    Quantity(Quantity),
    /// What `type()` returns: a type's namespace (`System`, `FHIR`) and name.
    TypeInfo {
        /// `System` or `FHIR`.
        namespace: &'static str,
        /// The type's name.
        name: String,
    },
    /// The target of a literal reference, as `resolve()` yields it without a
    /// server: only its type and id are known (enough for `resolve() is Patient`).
    ReferenceTarget {
        /// The target's resource type.
        resource_type: &'static str,
        /// The target's id.
        id: String,
    },
}

/// A FHIRPath collection.
pub type Collection<'a> = Vec<Value<'a>>;

/// Parses a JSON number's text as a decimal (exponents allowed).
pub fn parse_decimal(text: &str) -> Option<Decimal> {
    Decimal::from_str_exact(text)
        .ok()
        .or_else(|| Decimal::from_scientific(text).ok())
}

fn is_integer_type(t: &str) -> bool {
    matches!(t, "integer" | "positiveInt" | "unsignedInt" | "integer64")
}

impl<'a> Value<'a> {
    /// A node value with a type looked up by the caller.
    pub fn node(
        json: &'a JsonValue<'a>,
        fhir_type: Option<&'static str>,
        children_owner: Option<&'static str>,
    ) -> Self {
        Value::Node(Node {
            json,
            fhir_type,
            children_owner,
            primitive_element: None,
        })
    }

    /// A resource node: its type from `resourceType`.
    pub fn resource(json: &'a JsonValue<'a>, model: &FhirModel) -> Self {
        let t = json
            .get("resourceType")
            .and_then(JsonValue::as_str)
            .and_then(|t| model.type_name(t));
        Value::node(json, t, t)
    }

    /// The system value of a primitive node (by its FHIR type, else by its JSON
    /// type); non-primitive values are returned unchanged.
    pub fn to_system(&self) -> Value<'a> {
        let Value::Node(node) = self else { return self.clone() };
        let t = node.fhir_type.unwrap_or("");
        if matches!(
            t,
            "Quantity" | "Age" | "Duration" | "Distance" | "Count" | "SimpleQuantity" | "MoneyQuantity"
        ) && let Some(JsonValue::Number(n)) = node.json.get("value")
            && let Some(value) = parse_decimal(n)
        {
            let unit = node
                .json
                .get("code")
                .or_else(|| node.json.get("unit"))
                .and_then(JsonValue::as_str)
                .unwrap_or("1");
            return Value::Quantity(Quantity {
                value,
                unit: unit.to_string(),
            });
        }
        match node.json {
            JsonValue::Bool(b) => Value::Boolean(*b),
            JsonValue::Number(n) => {
                if is_integer_type(t) || (t.is_empty() && !n.contains(['.', 'e', 'E'])) {
                    n.parse().map(Value::Integer).unwrap_or_else(|_| self.clone())
                } else {
                    parse_decimal(n).map(Value::Decimal).unwrap_or_else(|| self.clone())
                }
            }
            JsonValue::String(s) => match t {
                "date" => DateTimeValue::parse(s)
                    .map(Value::Date)
                    .unwrap_or_else(|| Value::String(s.to_string())),
                "dateTime" | "instant" => DateTimeValue::parse(s)
                    .map(Value::DateTime)
                    .unwrap_or_else(|| Value::String(s.to_string())),
                "time" => TimeValue::parse(s)
                    .map(Value::Time)
                    .unwrap_or_else(|| Value::String(s.to_string())),
                "decimal" => parse_decimal(s)
                    .map(Value::Decimal)
                    .unwrap_or_else(|| Value::String(s.to_string())),
                _ => Value::String(s.to_string()),
            },
            _ => self.clone(),
        }
    }

    /// The FHIR type of this value, or its System type name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Node(n) => n.fhir_type.unwrap_or(match n.json {
                JsonValue::Bool(_) => "boolean",
                JsonValue::Number(t) if !t.contains('.') => "integer",
                JsonValue::Number(_) => "decimal",
                JsonValue::String(_) => "string",
                _ => "Element",
            }),
            Value::Boolean(_) => "Boolean",
            Value::Integer(_) => "Integer",
            Value::Decimal(_) => "Decimal",
            Value::String(_) => "String",
            Value::Date(_) => "Date",
            Value::DateTime(_) => "DateTime",
            Value::Time(_) => "Time",
            Value::Quantity(_) => "Quantity",
            Value::ReferenceTarget { resource_type, .. } => resource_type,
            Value::TypeInfo { .. } => "TypeInfo",
        }
    }

    /// The string content of a string-like value.
    pub fn as_string(&self) -> Option<String> {
        match self.to_system() {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// True if this is a primitive value (system value or primitive node).
    pub fn is_primitive(&self) -> bool {
        match self {
            Value::Node(n) => !matches!(n.json, JsonValue::Object(_) | JsonValue::Array(_) | JsonValue::Null),
            Value::ReferenceTarget { .. } | Value::TypeInfo { .. } => false,
            _ => true,
        }
    }

    /// Renders a primitive as FHIRPath's `toString()` does.
    pub fn to_fhirpath_string(&self) -> Option<String> {
        Some(match self.to_system() {
            Value::Boolean(b) => b.to_string(),
            Value::Integer(i) => i.to_string(),
            Value::Decimal(d) => d.to_string(),
            Value::String(s) => s,
            Value::Date(d) | Value::DateTime(d) => match self {
                Value::Node(Node {
                    json: JsonValue::String(s),
                    ..
                }) => s.to_string(),
                _ => d.format(),
            },
            Value::Time(t) => t.format(),
            Value::Quantity(q) => {
                if is_calendar_word(&q.unit) {
                    format!("{} {}", q.value, q.unit)
                } else {
                    format!("{} '{}'", q.value, q.unit)
                }
            }
            _ => return None,
        })
    }
}

/// True for calendar duration words (`year`, `months`, …).
pub fn is_calendar_word(unit: &str) -> bool {
    matches!(
        unit.trim_end_matches('s'),
        "year" | "month" | "week" | "day" | "hour" | "minute" | "second" | "millisecond"
    )
}

/// Deep equality of two JSON values, ignoring member order.
fn json_equal(a: &JsonValue<'_>, b: &JsonValue<'_>) -> bool {
    match (a, b) {
        (JsonValue::Object(x), JsonValue::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| b.get(k).is_some_and(|w| json_equal(v, w)))
        }
        (JsonValue::Array(x), JsonValue::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| json_equal(v, w))
        }
        (JsonValue::Number(x), JsonValue::Number(y)) => match (parse_decimal(x), parse_decimal(y)) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        _ => a == b,
    }
}

/// FHIRPath `=` on two items: `None` when the result is unknown (empty).
pub fn equals(a: &Value<'_>, b: &Value<'_>) -> Option<bool> {
    if let (Value::Node(x), Value::Node(y)) = (a, b)
        && (!a.is_primitive() || !b.is_primitive())
    {
        return Some(json_equal(x.json, y.json));
    }
    match (a.to_system(), b.to_system()) {
        (Value::Boolean(x), Value::Boolean(y)) => Some(x == y),
        (Value::Integer(x), Value::Integer(y)) => Some(x == y),
        (Value::Integer(x), Value::Decimal(y)) | (Value::Decimal(y), Value::Integer(x)) => Some(Decimal::from(x) == y),
        (Value::Decimal(x), Value::Decimal(y)) => Some(x == y),
        (Value::String(x), Value::String(y)) => Some(x == y),
        (Value::Date(x) | Value::DateTime(x), Value::Date(y) | Value::DateTime(y)) => {
            x.compare(&y).map(|o| o == Ordering::Equal)
        }
        (Value::Time(x), Value::Time(y)) => x.compare(&y).map(|o| o == Ordering::Equal),
        (Value::Quantity(x), Value::Quantity(y)) => {
            let (a, da) = units::to_base(x.value, &x.unit);
            let (b, db) = units::to_base(y.value, &y.unit);
            (da == db).then_some(a == b)
        }
        (
            Value::ReferenceTarget {
                resource_type: t1,
                id: i1,
            },
            Value::ReferenceTarget {
                resource_type: t2,
                id: i2,
            },
        ) => Some(t1 == t2 && i1 == i2),
        (Value::TypeInfo { namespace: n1, name: a }, Value::TypeInfo { namespace: n2, name: b }) => {
            Some(n1 == n2 && a == b)
        }
        _ => Some(false),
    }
}

/// FHIRPath `~` (equivalence): case- and whitespace-insensitive strings,
/// decimals compared at the lesser precision, never unknown.
pub fn equivalent(a: &Value<'_>, b: &Value<'_>) -> bool {
    match (a.to_system(), b.to_system()) {
        (Value::String(x), Value::String(y)) => {
            let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
            norm(&x) == norm(&y)
        }
        (Value::Decimal(x), Value::Decimal(y)) => {
            let scale = x.scale().min(y.scale());
            x.round_dp(scale) == y.round_dp(scale)
        }
        (Value::Integer(x), Value::Decimal(y)) | (Value::Decimal(y), Value::Integer(x)) => {
            y.round_dp(0) == Decimal::from(x)
        }
        (Value::Date(x) | Value::DateTime(x), Value::Date(y) | Value::DateTime(y)) => {
            x.compare(&y) == Some(Ordering::Equal)
        }
        (Value::Quantity(x), Value::Quantity(y)) => match units::convert(y.value, &y.unit, &x.unit) {
            Some(y_in_x) => {
                let scale = x.value.scale().min(y.value.scale());
                x.value.round_dp(scale) == y_in_x.round_dp(scale)
            }
            None => false,
        },
        _ => equals(a, b).unwrap_or(false),
    }
}

/// FHIRPath ordering of two items; `Err` for incomparable types, `Ok(None)`
/// when the answer is unknown (dates of different precision).
pub fn compare(a: &Value<'_>, b: &Value<'_>) -> Result<Option<Ordering>, String> {
    Ok(match (a.to_system(), b.to_system()) {
        (Value::Integer(x), Value::Integer(y)) => Some(x.cmp(&y)),
        (Value::Integer(x), Value::Decimal(y)) => Some(Decimal::from(x).cmp(&y)),
        (Value::Decimal(x), Value::Integer(y)) => Some(x.cmp(&Decimal::from(y))),
        (Value::Decimal(x), Value::Decimal(y)) => Some(x.cmp(&y)),
        (Value::String(x), Value::String(y)) => Some(x.cmp(&y)),
        (Value::Date(x) | Value::DateTime(x), Value::Date(y) | Value::DateTime(y)) => x.compare(&y),
        (Value::Time(x), Value::Time(y)) => x.compare(&y),
        (Value::Quantity(x), Value::Quantity(y)) => {
            let (a, da) = units::to_base(x.value, &x.unit);
            let (b, db) = units::to_base(y.value, &y.unit);
            (da == db).then(|| a.cmp(&b))
        }
        (x, y) => return Err(format!("cannot compare {} with {}", x.type_name(), y.type_name())),
    })
}
