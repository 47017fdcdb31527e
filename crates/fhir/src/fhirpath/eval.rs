//! Evaluating a parsed FHIRPath expression over a resource.

use std::collections::HashMap;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use super::FhirPathError;
use super::ast::{BinaryOp, Expr, Literal, TypeSpecifier};
use super::functions;
use super::temporal::{DateTimeValue, TimeValue};
use super::value::{Collection, Node, Quantity, Value, compare, equals, equivalent, parse_decimal};
use crate::fhir::model::FhirModel;
use crate::json::JsonValue;

/// The iteration scope: `$this` (also the focus of bare names), `$index`, `$total`.
#[derive(Debug, Clone)]
pub struct Scope<'a> {
    /// `$this` and the focus.
    pub this: Collection<'a>,
    /// `$index` inside `where`, `select`, … .
    pub index: Option<i64>,
    /// `$total` inside `aggregate`.
    pub total: Option<Collection<'a>>,
}

impl<'a> Scope<'a> {
    /// A scope whose focus is `this`.
    pub fn new(this: Collection<'a>) -> Self {
        Self {
            this,
            index: None,
            total: None,
        }
    }
}

/// Evaluation state shared by one evaluation: the model, `%resource` and the
/// environment variables (`%name` constants, `%rowIndex`).
pub struct Evaluator<'a, 'v> {
    /// The FHIR type model.
    pub model: &'static FhirModel,
    /// `%resource` / `%context` / `%rootResource`.
    pub resource: &'v [Value<'a>],
    /// `%name` variables.
    pub variables: &'v HashMap<String, Collection<'a>>,
}

pub(crate) fn eval_error(pos: Option<usize>, message: impl Into<String>) -> FhirPathError {
    FhirPathError::Evaluation {
        message: message.into(),
        pos,
    }
}

/// System type names (FHIRPath `System.*`).
const SYSTEM_TYPES: [&str; 8] = [
    "Boolean", "String", "Integer", "Decimal", "Date", "DateTime", "Time", "Quantity",
];

fn system_type_of_fhir(t: &str) -> Option<&'static str> {
    Some(match t {
        "boolean" => "Boolean",
        "integer" | "positiveInt" | "unsignedInt" | "integer64" => "Integer",
        "decimal" => "Decimal",
        "date" => "Date",
        "dateTime" | "instant" => "DateTime",
        "time" => "Time",
        "string" | "code" | "id" | "uri" | "url" | "canonical" | "oid" | "uuid" | "markdown" | "base64Binary"
        | "xhtml" => "String",
        _ => return None,
    })
}

impl<'a> Evaluator<'a, '_> {
    /// Evaluates `expr` in `scope`.
    pub fn eval(&self, expr: &Expr, scope: &Scope<'a>) -> Result<Collection<'a>, FhirPathError> {
        match expr {
            Expr::Literal(literal) => literal_value(literal),
            Expr::Identifier(name) => {
                let mut out = Vec::new();
                for item in &scope.this {
                    self.navigate(item, name, true, &mut out);
                }
                Ok(out)
            }
            Expr::Member(target, name) => {
                let input = self.eval(target, scope)?;
                let mut out = Vec::new();
                for item in &input {
                    self.navigate(item, name, false, &mut out);
                }
                Ok(out)
            }
            Expr::External(name) => self.external(name),
            Expr::This => Ok(scope.this.clone()),
            Expr::Index => Ok(scope.index.map(|i| vec![Value::Integer(i)]).unwrap_or_default()),
            Expr::Total => Ok(scope.total.clone().unwrap_or_default()),
            Expr::Function {
                target,
                name,
                args,
                pos,
            } => {
                let input = match target {
                    Some(t) => self.eval(t, scope)?,
                    None => scope.this.clone(),
                };
                functions::call(self, name, *pos, input, args, scope)
            }
            Expr::Indexer(target, index) => {
                let input = self.eval(target, scope)?;
                let index = self.eval(index, scope)?;
                let Some(i) = singleton_integer(&index, "indexer")? else {
                    return Ok(Vec::new());
                };
                Ok(usize::try_from(i)
                    .ok()
                    .and_then(|i| input.into_iter().nth(i))
                    .into_iter()
                    .collect())
            }
            Expr::Negate(operand) => {
                let value = self.eval(operand, scope)?;
                let Some(item) = singleton(&value, "unary minus")? else {
                    return Ok(Vec::new());
                };
                Ok(vec![match item.to_system() {
                    Value::Integer(i) => match i.checked_neg() {
                        Some(n) => Value::Integer(n),
                        None => return Ok(Vec::new()),
                    },
                    Value::Decimal(d) => Value::Decimal(-d),
                    Value::Quantity(q) => Value::Quantity(Quantity {
                        value: -q.value,
                        unit: q.unit,
                    }),
                    other => return Err(eval_error(None, format!("cannot negate a {}", other.type_name()))),
                }])
            }
            Expr::Binary(op, left, right) => self.binary(*op, left, right, scope),
            Expr::Is(target, type_spec) => {
                self.check_type(type_spec)?;
                let input = self.eval(target, scope)?;
                match singleton(&input, "is")? {
                    None => Ok(Vec::new()),
                    Some(item) => Ok(vec![Value::Boolean(self.is_type(item, type_spec))]),
                }
            }
            Expr::As(target, type_spec) => {
                self.check_type(type_spec)?;
                let input = self.eval(target, scope)?;
                Ok(input.into_iter().filter(|v| self.is_type_exact(v, type_spec)).collect())
            }
        }
    }

    fn external(&self, name: &str) -> Result<Collection<'a>, FhirPathError> {
        if let Some(value) = self.variables.get(name) {
            return Ok(value.clone());
        }
        match name {
            "resource" | "context" | "rootResource" => Ok(self.resource.to_vec()),
            "ucum" => Ok(vec![Value::String("http://unitsofmeasure.org".into())]),
            "sct" => Ok(vec![Value::String("http://snomed.info/sct".into())]),
            "loinc" => Ok(vec![Value::String("http://loinc.org".into())]),
            _ if name.starts_with("vs-") => Ok(vec![Value::String(format!(
                "http://hl7.org/fhir/ValueSet/{}",
                &name[3..]
            ))]),
            _ if name.starts_with("ext-") => Ok(vec![Value::String(format!(
                "http://hl7.org/fhir/StructureDefinition/{}",
                &name[4..]
            ))]),
            _ => Err(eval_error(None, format!("unknown variable %{name}"))),
        }
    }

    /// Checks that `spec` names a type of the FHIR model or a System type.
    pub fn check_type(&self, spec: &TypeSpecifier) -> Result<(), FhirPathError> {
        let known = match spec.namespace.as_deref() {
            // An unknown System type is simply never matched.
            Some("System") => true,
            Some("FHIR") => self.model.type_def(&spec.name).is_some(),
            None => SYSTEM_TYPES.contains(&spec.name.as_str()) || self.model.type_def(&spec.name).is_some(),
            Some(_) => false,
        };
        if known {
            Ok(())
        } else {
            let ns = spec.namespace.as_deref().map(|n| format!("{n}.")).unwrap_or_default();
            Err(eval_error(None, format!("unknown type '{ns}{}'", spec.name)))
        }
    }

    /// Type test for `is` (a primitive also is its base types: a `code` is a
    /// `string`).
    pub fn is_type(&self, value: &Value<'_>, spec: &TypeSpecifier) -> bool {
        self.type_matches(value, spec, false)
    }

    /// Type filter for `as` and `ofType`: primitives must match exactly (a
    /// `code` is not returned by `ofType(string)`), other types by inheritance.
    pub fn is_type_exact(&self, value: &Value<'_>, spec: &TypeSpecifier) -> bool {
        self.type_matches(value, spec, true)
    }

    fn type_matches(&self, value: &Value<'_>, spec: &TypeSpecifier, exact_primitives: bool) -> bool {
        let name = spec.name.as_str();
        let system_only = spec.namespace.as_deref() == Some("System");
        let fhir_only = spec.namespace.as_deref() == Some("FHIR");
        match value {
            Value::Node(node) => {
                let Some(t) = node.fhir_type.or_else(|| match node.json {
                    JsonValue::Bool(_) => Some("boolean"),
                    JsonValue::String(_) => Some("string"),
                    JsonValue::Number(n) if n.contains('.') => Some("decimal"),
                    JsonValue::Number(_) => Some("integer"),
                    _ => None,
                }) else {
                    return false;
                };
                let inherits = !(exact_primitives && self.model.is_primitive(t)) && self.model.derives_from(t, name);
                !system_only && (t == name || inherits)
            }
            Value::ReferenceTarget { resource_type, .. } => {
                !system_only && self.model.derives_from(resource_type, name)
            }
            other => {
                let t = other.type_name();
                !fhir_only && (t == name || t.eq_ignore_ascii_case(name) && system_type_of_fhir(name) == Some(t))
            }
        }
    }

    /// Appends the children called `name` of `item` to `out`. At the root of a
    /// path (`root`), a type name selects the focus itself (`Patient.name`).
    pub fn navigate(&self, item: &Value<'a>, name: &str, root: bool, out: &mut Collection<'a>) {
        if let Value::TypeInfo {
            namespace,
            name: type_name,
        } = item
        {
            match name {
                "namespace" => out.push(Value::String(namespace.to_string())),
                "name" => out.push(Value::String(type_name.clone())),
                _ => {}
            }
            return;
        }
        let Value::Node(node) = item else { return };
        if let Some(element) = node.primitive_element
            && matches!(name, "extension" | "id")
        {
            let companion = Value::node(element, Some("Element"), Some("Element"));
            self.navigate(&companion, name, false, out);
            return;
        }
        let JsonValue::Object(members) = node.json else { return };
        if root
            && name.starts_with(|c: char| c.is_ascii_uppercase())
            && let Some(t) = node.fhir_type
            && self.model.is_resource(t)
            && self.model.derives_from(t, name)
        {
            out.push(item.clone());
            return;
        }
        let element = node.children_owner.and_then(|owner| self.model.element(owner, name));
        match element {
            Some(def) if def.choice => {
                // JSON name = element name + the type code with its first letter upper-cased.
                for (key, v) in members {
                    let Some(suffix) = key.strip_prefix(name) else { continue };
                    let mut chars = suffix.chars();
                    let Some(first) = chars.next().filter(char::is_ascii_uppercase) else {
                        continue;
                    };
                    let rest = chars.as_str();
                    if let Some(code) = def.types.iter().find(|code| {
                        let mut c = code.chars();
                        c.next().is_some_and(|f| f.eq_ignore_ascii_case(&first)) && c.as_str() == rest
                    }) {
                        self.push_items(v, Some(code), Some(code), out);
                    }
                }
            }
            Some(def) => {
                let t = if def.types.len() == 1 { Some(def.types[0]) } else { None };
                // One pass over the members finds the value and its `_name` companion.
                let (mut value, mut companion) = (None, None);
                for (key, v) in members {
                    if key == name {
                        value = Some(v);
                    } else if key.strip_prefix('_') == Some(name) {
                        companion = Some(v);
                    }
                }
                match (value, companion) {
                    (Some(v), None) => self.push_items(v, t, def.children_owner, out),
                    (v, Some(companion)) => self.push_primitives(v, companion, t, out),
                    (None, None) => {}
                }
            }
            None => {
                if let Some(v) = node.json.get(name) {
                    self.push_items(v, None, None, out);
                } else {
                    // Unknown owner: resolve a choice by its JSON name (`valueQuantity`).
                    for (key, v) in members {
                        if let Some(suffix) = key.strip_prefix(name)
                            && suffix.starts_with(|c: char| c.is_ascii_uppercase())
                        {
                            let t = self.choice_suffix_type(suffix);
                            self.push_items(v, t, t, out);
                        }
                    }
                }
            }
        }
    }

    /// Pushes primitive values paired with their `_name` companions (a value
    /// may be absent, `null` in an array, when only extensions are given).
    fn push_primitives(
        &self,
        values: Option<&'a JsonValue<'a>>,
        companions: &'a JsonValue<'a>,
        t: Option<&'static str>,
        out: &mut Collection<'a>,
    ) {
        static NULL: JsonValue<'static> = JsonValue::Null;
        let pair = |value: &'a JsonValue<'a>, companion: Option<&'a JsonValue<'a>>| {
            let companion = companion.filter(|c| !matches!(c, JsonValue::Null));
            if matches!(value, JsonValue::Null) && companion.is_none() {
                return None;
            }
            Some(Value::Node(Node {
                json: value,
                fhir_type: t,
                children_owner: t,
                primitive_element: companion,
            }))
        };
        match (values, companions) {
            (Some(JsonValue::Array(vs)), JsonValue::Array(cs)) => {
                for (i, v) in vs.iter().enumerate() {
                    out.extend(pair(v, cs.get(i)));
                }
            }
            (None, JsonValue::Array(cs)) => out.extend(cs.iter().filter_map(|c| pair(&NULL, Some(c)))),
            (Some(v), c) => out.extend(pair(v, Some(c))),
            (None, c) => out.extend(pair(&NULL, Some(c))),
        }
    }

    fn choice_suffix_type(&self, suffix: &str) -> Option<&'static str> {
        if let Some(t) = self.model.type_name(suffix) {
            return Some(t);
        }
        let mut lowered = suffix.to_string();
        if let Some(first) = lowered.get_mut(0..1) {
            first.make_ascii_lowercase();
        }
        self.model.type_name(&lowered)
    }

    fn push_items(
        &self,
        v: &'a JsonValue<'a>,
        t: Option<&'static str>,
        owner: Option<&'static str>,
        out: &mut Collection<'a>,
    ) {
        let mut push = |item: &'a JsonValue<'a>| {
            if matches!(item, JsonValue::Null) {
                return;
            }
            if t == Some("Resource") || (t.is_none() && item.get("resourceType").is_some()) {
                out.push(Value::resource(item, self.model));
            } else {
                out.push(Value::node(item, t, owner));
            }
        };
        match v {
            JsonValue::Array(items) => items.iter().for_each(&mut push),
            other => push(other),
        }
    }

    fn binary(
        &self,
        op: BinaryOp,
        left: &Expr,
        right: &Expr,
        scope: &Scope<'a>,
    ) -> Result<Collection<'a>, FhirPathError> {
        use BinaryOp::*;
        // Boolean operators short-circuit per FHIRPath three-valued logic.
        if matches!(op, And | Or | Xor | Implies) {
            let l = to_boolean(&self.eval(left, scope)?)?;
            if op == And && l == Some(false) {
                return Ok(vec![Value::Boolean(false)]);
            }
            if op == Or && l == Some(true) {
                return Ok(vec![Value::Boolean(true)]);
            }
            if op == Implies && l == Some(false) {
                return Ok(vec![Value::Boolean(true)]);
            }
            let r = to_boolean(&self.eval(right, scope)?)?;
            let result = match op {
                And => match (l, r) {
                    (Some(true), Some(true)) => Some(true),
                    (_, Some(false)) => Some(false),
                    _ => None,
                },
                Or => match (l, r) {
                    (Some(false), Some(false)) => Some(false),
                    (_, Some(true)) => Some(true),
                    _ => None,
                },
                Xor => match (l, r) {
                    (Some(a), Some(b)) => Some(a != b),
                    _ => None,
                },
                _ => match (l, r) {
                    (Some(true), r) => r,
                    (None, Some(true)) => Some(true),
                    _ => None,
                },
            };
            return Ok(result.map(Value::Boolean).into_iter().collect());
        }
        let l = self.eval(left, scope)?;
        let r = self.eval(right, scope)?;
        match op {
            Union => Ok(distinct(l.into_iter().chain(r))),
            Eq | NotEq => {
                if l.is_empty() || r.is_empty() {
                    return Ok(Vec::new());
                }
                let result = if l.len() != r.len() {
                    Some(false)
                } else {
                    let mut all = Some(true);
                    for (a, b) in l.iter().zip(&r) {
                        match equals(a, b) {
                            Some(true) => {}
                            Some(false) => {
                                all = Some(false);
                                break;
                            }
                            None => all = None,
                        }
                    }
                    all
                };
                Ok(result
                    .map(|b| Value::Boolean(if op == Eq { b } else { !b }))
                    .into_iter()
                    .collect())
            }
            Equivalent | NotEquivalent => {
                let result = l.len() == r.len() && l.iter().all(|a| r.iter().any(|b| equivalent(a, b)));
                Ok(vec![Value::Boolean(if op == Equivalent { result } else { !result })])
            }
            Lt | Gt | Le | Ge => {
                let (Some(a), Some(b)) = (singleton(&l, "comparison")?, singleton(&r, "comparison")?) else {
                    return Ok(Vec::new());
                };
                let ordering = compare(a, b).map_err(|m| eval_error(None, m))?;
                Ok(ordering
                    .map(|o| {
                        Value::Boolean(match op {
                            Lt => o.is_lt(),
                            Gt => o.is_gt(),
                            Le => o.is_le(),
                            _ => o.is_ge(),
                        })
                    })
                    .into_iter()
                    .collect())
            }
            In | Contains => {
                let (item, collection) = if op == In { (&l, &r) } else { (&r, &l) };
                let Some(item) = singleton(item, "membership")? else {
                    return Ok(Vec::new());
                };
                Ok(vec![Value::Boolean(
                    collection.iter().any(|c| equals(item, c) == Some(true)),
                )])
            }
            Concat => {
                let s = |c: &Collection<'a>| -> Result<String, FhirPathError> {
                    Ok(singleton(c, "&")?
                        .and_then(Value::to_fhirpath_string)
                        .unwrap_or_default())
                };
                Ok(vec![Value::String(s(&l)? + &s(&r)?)])
            }
            Add | Sub | Mul | Div | IntDiv | Mod => {
                let (Some(a), Some(b)) = (singleton(&l, "arithmetic")?, singleton(&r, "arithmetic")?) else {
                    return Ok(Vec::new());
                };
                arithmetic(op, &a.to_system(), &b.to_system())
            }
            And | Or | Xor | Implies => Ok(Vec::new()),
        }
    }
}

fn literal_value<'a>(literal: &Literal) -> Result<Collection<'a>, FhirPathError> {
    let bad = |what: &str, text: &str| eval_error(None, format!("invalid {what} literal '{text}'"));
    Ok(match literal {
        Literal::Empty => Vec::new(),
        Literal::Boolean(b) => vec![Value::Boolean(*b)],
        Literal::String(s) => vec![Value::String(s.clone())],
        Literal::Integer(i) => vec![Value::Integer(*i)],
        Literal::Decimal(d) => vec![Value::Decimal(parse_decimal(d).ok_or_else(|| bad("decimal", d))?)],
        Literal::Date(d) => vec![Value::Date(DateTimeValue::parse(d).ok_or_else(|| bad("date", d))?)],
        Literal::DateTime(d) => vec![Value::DateTime(
            DateTimeValue::parse(d).ok_or_else(|| bad("dateTime", d))?,
        )],
        Literal::Time(t) => vec![Value::Time(TimeValue::parse(t).ok_or_else(|| bad("time", t))?)],
        Literal::Quantity { value, unit } => {
            vec![Value::Quantity(Quantity {
                value: parse_decimal(value).ok_or_else(|| bad("quantity", value))?,
                unit: unit.clone(),
            })]
        }
    })
}

/// Removes duplicates (FHIRPath equality), keeping first occurrences.
pub fn distinct<'a>(items: impl IntoIterator<Item = Value<'a>>) -> Collection<'a> {
    let mut out: Collection<'a> = Vec::new();
    for item in items {
        if !out.iter().any(|o| equals(o, &item) == Some(true)) {
            out.push(item);
        }
    }
    out
}

/// The single item of a collection; an error if it has more than one.
pub fn singleton<'c, 'a>(c: &'c Collection<'a>, what: &str) -> Result<Option<&'c Value<'a>>, FhirPathError> {
    match c.len() {
        0 => Ok(None),
        1 => Ok(c.first()),
        n => Err(eval_error(None, format!("{what} expects a single item, got {n}"))),
    }
}

/// The single integer of a collection.
pub fn singleton_integer(c: &Collection<'_>, what: &str) -> Result<Option<i64>, FhirPathError> {
    match singleton(c, what)?.map(Value::to_system) {
        None => Ok(None),
        Some(Value::Integer(i)) => Ok(Some(i)),
        Some(other) => Err(eval_error(
            None,
            format!("{what} expects an integer, got {}", other.type_name()),
        )),
    }
}

/// FHIRPath singleton evaluation as a boolean: empty → unknown, one boolean →
/// itself, one other item → true, several → error.
pub fn to_boolean(c: &Collection<'_>) -> Result<Option<bool>, FhirPathError> {
    match c.len() {
        0 => Ok(None),
        1 => Ok(Some(match c[0].to_system() {
            Value::Boolean(b) => b,
            _ => true,
        })),
        n => Err(eval_error(None, format!("expected a single boolean, got {n} items"))),
    }
}

fn arithmetic<'a>(op: BinaryOp, a: &Value<'a>, b: &Value<'a>) -> Result<Collection<'a>, FhirPathError> {
    use BinaryOp::*;
    let dec = |v: &Value<'_>| match v {
        Value::Integer(i) => Some(Decimal::from(*i)),
        Value::Decimal(d) => Some(*d),
        _ => None,
    };
    let result = match (op, a, b) {
        (Add, Value::String(x), Value::String(y)) => Value::String(format!("{x}{y}")),
        (Add | Sub | Mul, Value::Integer(x), Value::Integer(y)) => {
            let r = match op {
                Add => x.checked_add(*y),
                Sub => x.checked_sub(*y),
                _ => x.checked_mul(*y),
            };
            match r {
                Some(r) => Value::Integer(r),
                None => return Ok(Vec::new()),
            }
        }
        (IntDiv, Value::Integer(x), Value::Integer(y)) => match x.checked_div(*y) {
            Some(r) => Value::Integer(r),
            None => return Ok(Vec::new()),
        },
        (Mod, Value::Integer(x), Value::Integer(y)) => match x.checked_rem(*y) {
            Some(r) => Value::Integer(r),
            None => return Ok(Vec::new()),
        },
        (Add | Sub, Value::Date(d) | Value::DateTime(d), Value::Quantity(q)) => {
            let Some(amount) = q.value.trunc().to_i64() else {
                return Ok(Vec::new());
            };
            let amount = if op == Sub { -amount } else { amount };
            let shifted = d
                .add(amount, &q.unit)
                .ok_or_else(|| eval_error(None, format!("'{}' is not a time unit", q.unit)))?;
            if matches!(a, Value::Date(_)) {
                Value::Date(shifted)
            } else {
                Value::DateTime(shifted)
            }
        }
        (Add | Sub, Value::Quantity(x), Value::Quantity(y)) if x.unit == y.unit => {
            let value = if op == Add {
                x.value.checked_add(y.value)
            } else {
                x.value.checked_sub(y.value)
            };
            let Some(value) = value else { return Ok(Vec::new()) };
            Value::Quantity(Quantity {
                value,
                unit: x.unit.clone(),
            })
        }
        (Mul | Div, Value::Quantity(x), Value::Integer(_) | Value::Decimal(_)) => {
            let Some(y) = dec(b) else { return Ok(Vec::new()) };
            let value = if op == Mul {
                x.value.checked_mul(y)
            } else {
                x.value.checked_div(y)
            };
            let Some(value) = value else { return Ok(Vec::new()) };
            Value::Quantity(Quantity {
                value,
                unit: x.unit.clone(),
            })
        }
        _ => {
            let (Some(x), Some(y)) = (dec(a), dec(b)) else {
                return Err(eval_error(
                    None,
                    format!("cannot apply {op:?} to {} and {}", a.type_name(), b.type_name()),
                ));
            };
            // Overflow and division by zero give empty, as FHIRPath specifies.
            let result = match op {
                Add => x.checked_add(y).map(Value::Decimal),
                Sub => x.checked_sub(y).map(Value::Decimal),
                Mul => x.checked_mul(y).map(Value::Decimal),
                Div => x.checked_div(y).map(|d| Value::Decimal(d.normalize())),
                IntDiv => x.checked_div(y).and_then(|d| d.trunc().to_i64()).map(Value::Integer),
                Mod => x.checked_rem(y).map(Value::Decimal),
                _ => None,
            };
            match result {
                Some(v) => v,
                _ => return Ok(Vec::new()),
            }
        }
    };
    Ok(vec![result])
}
