//! FHIRPath functions: combining, logic (`not`, `iif`), utilities (`trace`, `now`, `today`, `sort`, …) and tree navigation (`children`, `descendants`).

use super::*;

/// The functions of this family.
pub(super) static FUNCTIONS: &[Function] = &[
    // Logic and utility
    f("not", 0, 0, |_, input, _, _| {
        Ok(to_boolean(&input)?.map(|b| boolean(!b)).unwrap_or_default())
    }),
    f("iif", 2, 3, |e, input, args, scope| {
        if input.len() > 1 {
            return Err(eval_error(None, "iif() on more than one item"));
        }
        let inner = if input.is_empty() {
            scope.clone()
        } else {
            Scope {
                this: input,
                ..scope.clone()
            }
        };
        let criterion = e.eval(&args[0], &inner)?;
        if let [single] = criterion.as_slice()
            && !matches!(single.to_system(), Value::Boolean(_))
        {
            return Err(eval_error(None, "iif() criterion must be a boolean"));
        }
        match to_boolean(&criterion)? {
            Some(true) => e.eval(&args[1], &inner),
            _ => args.get(2).map_or(Ok(Vec::new()), |a| e.eval(a, &inner)),
        }
    }),
    f("trace", 1, 2, |_, input, _, _| Ok(input)),
    f("now", 0, 0, |_, _, _, _| Ok(vec![Value::DateTime(now())])),
    f("today", 0, 0, |_, _, _, _| {
        let n = now();
        Ok(vec![Value::Date(DateTimeValue {
            precision: Precision::Day,
            offset_minutes: None,
            ..n
        })])
    }),
    f("timeOfDay", 0, 0, |_, _, _, _| {
        let n = now();
        Ok(vec![Value::Time(TimeValue {
            hour: n.hour,
            minute: n.minute,
            second: n.second,
            millisecond: n.millisecond,
            precision: Precision::Millisecond,
        })])
    }),
    f("aggregate", 1, 2, |e, input, args, scope| {
        let mut total = match args.get(1) {
            Some(init) => e.eval(init, scope)?,
            None => Vec::new(),
        };
        for (i, item) in input.into_iter().enumerate() {
            let s = Scope {
                this: vec![item],
                index: Some(i as i64),
                total: Some(total),
            };
            total = e.eval(&args[0], &s)?;
        }
        Ok(total)
    }),
    f("type", 0, 0, |e, input, _, _| {
        Ok(input
            .iter()
            .map(|v| match v {
                Value::Node(n) => {
                    let name = v.type_name().to_string();
                    let _ = n;
                    Value::TypeInfo {
                        namespace: "FHIR",
                        name,
                    }
                }
                Value::ReferenceTarget { resource_type, .. } if e.model.is_resource(resource_type) => Value::TypeInfo {
                    namespace: "FHIR",
                    name: resource_type.to_string(),
                },
                other => Value::TypeInfo {
                    namespace: "System",
                    name: other.type_name().to_string(),
                },
            })
            .collect())
    }),
    f("sort", 0, 8, |e, input, args, _| {
        // Keys: each argument, evaluated per item; a leading `-` sorts descending.
        let mut keyed = Vec::with_capacity(input.len());
        for (i, item) in input.into_iter().enumerate() {
            let mut keys = Vec::new();
            for arg in args {
                let (expr, descending) = match arg {
                    Expr::Negate(inner) => (inner.as_ref(), true),
                    other => (other, false),
                };
                keys.push((
                    e.eval(expr, &item_scope(item.clone(), i))?.into_iter().next(),
                    descending,
                ));
            }
            keyed.push((keys, item));
        }
        let mut error = None;
        keyed.sort_by(|(ka, a), (kb, b)| {
            if ka.is_empty() {
                return order(a, b, &mut error);
            }
            for ((x, desc), (y, _)) in ka.iter().zip(kb) {
                // Items without a key come first, whatever the direction.
                let o = match (x, y) {
                    (None, None) => std::cmp::Ordering::Equal,
                    (None, Some(_)) => return std::cmp::Ordering::Less,
                    (Some(_), None) => return std::cmp::Ordering::Greater,
                    (Some(x), Some(y)) => order(x, y, &mut error),
                };
                let o = if *desc { o.reverse() } else { o };
                if o != std::cmp::Ordering::Equal {
                    return o;
                }
            }
            std::cmp::Ordering::Equal
        });
        match error {
            Some(e) => Err(eval_error(None, e)),
            None => Ok(keyed.into_iter().map(|(_, v)| v).collect()),
        }
    }),
    f("conformsTo", 1, 1, |e, input, args, scope| {
        let Some(url) = singleton_string(&e.eval(&args[0], scope)?, "conformsTo()")? else {
            return Ok(Vec::new());
        };
        let Some(item) = singleton(&input, "conformsTo()")? else {
            return Ok(Vec::new());
        };
        let t = item.type_name();
        let Some(base) = url
            .strip_prefix("http://hl7.org/fhir/StructureDefinition/")
            .filter(|b| e.model.type_def(b).is_some())
        else {
            return Err(eval_error(
                None,
                format!("unknown profile '{url}' (only base FHIR types are known)"),
            ));
        };
        Ok(boolean(e.model.derives_from(t, base)))
    }),
    f("comparable", 1, 1, |e, input, args, scope| {
        let other = e.eval(&args[0], scope)?;
        let (Some(a), Some(b)) = (
            singleton(&input, "comparable()")?.map(Value::to_system),
            singleton(&other, "comparable()")?.map(Value::to_system),
        ) else {
            return Ok(Vec::new());
        };
        match (a, b) {
            (Value::Quantity(x), Value::Quantity(y)) => {
                Ok(boolean(crate::fhirpath::units::comparable(&x.unit, &y.unit)))
            }
            _ => Err(eval_error(None, "comparable() expects quantities")),
        }
    }),
    f("precision", 0, 0, |_, input, _, _| {
        let Some(v) = singleton(&input, "precision()")?.map(Value::to_system) else {
            return Ok(Vec::new());
        };
        let digits = match v {
            Value::Decimal(d) => d.scale() as i64,
            Value::Integer(_) => 0,
            Value::Date(d) | Value::DateTime(d) => date_digits(d.precision),
            Value::Time(t) => time_digits(t.precision),
            _ => return Ok(Vec::new()),
        };
        Ok(vec![Value::Integer(digits)])
    }),
    // Tree navigation
    f("children", 0, 0, |e, input, _, _| Ok(children(e, &input))),
    f("descendants", 0, 0, |e, input, _, _| {
        let mut out = Vec::new();
        let mut frontier = children(e, &input);
        while !frontier.is_empty() {
            let next = children(e, &frontier);
            out.extend(frontier);
            frontier = next;
        }
        Ok(out)
    }),
];

pub(super) fn children<'a>(e: &Evaluator<'a, '_>, input: &Collection<'a>) -> Collection<'a> {
    let mut out = Vec::new();
    for item in input {
        let Value::Node(node) = item else { continue };
        let Some(members) = node.json.as_object() else { continue };
        for (key, _) in members {
            if key.starts_with('_') || key == "resourceType" {
                continue;
            }
            let before = out.len();
            e.navigate(item, key, false, &mut out);
            if out.len() == before {
                // A choice element's JSON name: navigate by its base name.
                let owner = node.children_owner;
                if let Some(owner) = owner {
                    for (name, def) in e.model.elements_of(owner) {
                        if def.choice && key.starts_with(name) {
                            e.navigate(item, name, false, &mut out);
                        }
                    }
                }
            }
        }
    }
    out
}

pub(super) fn now() -> DateTimeValue {
    let n = chrono::Utc::now();
    DateTimeValue::parse(&n.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| DateTimeValue::start_of_year(1970))
}
