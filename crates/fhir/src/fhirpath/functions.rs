//! FHIRPath functions: one table, one entry per function (name, arity,
//! implementation). Arguments arrive unevaluated, so functions that take a
//! criterion (`where`, `select`, `all`, …) evaluate it per input item.

use rust_decimal::Decimal;
use rust_decimal::prelude::{FromPrimitive, ToPrimitive};

use super::FhirPathError;
use super::ast::{Expr, TypeSpecifier};
use super::eval::{Evaluator, Scope, distinct, eval_error, singleton, singleton_integer, to_boolean};
use super::temporal::{DateTimeValue, Precision, TimeValue};
use super::value::{Collection, Node, Quantity, Value, equals, parse_decimal};
use crate::fhir::{parse_reference, split_reference};
use crate::json::JsonValue;

type Impl =
    for<'a, 'v> fn(&Evaluator<'a, 'v>, Collection<'a>, &[Expr], &Scope<'a>) -> Result<Collection<'a>, FhirPathError>;

/// A function: name, allowed argument counts, implementation.
struct Function {
    name: &'static str,
    min_args: usize,
    max_args: usize,
    eval: Impl,
}

const fn f(name: &'static str, min_args: usize, max_args: usize, eval: Impl) -> Function {
    Function {
        name,
        min_args,
        max_args,
        eval,
    }
}

/// Every supported function.
static FUNCTIONS: &[Function] = &[
    // Existence
    f("empty", 0, 0, |_, input, _, _| Ok(boolean(input.is_empty()))),
    f("exists", 0, 1, |e, input, args, _| {
        let input = match args.first() {
            Some(crit) => filter(e, input, crit)?,
            None => input,
        };
        Ok(boolean(!input.is_empty()))
    }),
    f("all", 1, 1, |e, input, args, _| {
        for (i, item) in input.into_iter().enumerate() {
            if to_boolean(&e.eval(&args[0], &item_scope(item, i))?)? != Some(true) {
                return Ok(boolean(false));
            }
        }
        Ok(boolean(true))
    }),
    f("allTrue", 0, 0, |_, input, _, _| {
        Ok(boolean(booleans(&input)?.iter().all(|b| *b)))
    }),
    f("anyTrue", 0, 0, |_, input, _, _| {
        Ok(boolean(booleans(&input)?.iter().any(|b| *b)))
    }),
    f("allFalse", 0, 0, |_, input, _, _| {
        Ok(boolean(booleans(&input)?.iter().all(|b| !*b)))
    }),
    f("anyFalse", 0, 0, |_, input, _, _| {
        Ok(boolean(booleans(&input)?.iter().any(|b| !*b)))
    }),
    f("subsetOf", 1, 1, |e, input, args, scope| {
        let other = e.eval(&args[0], scope)?;
        Ok(boolean(
            input.iter().all(|a| other.iter().any(|b| equals(a, b) == Some(true))),
        ))
    }),
    f("supersetOf", 1, 1, |e, input, args, scope| {
        let other = e.eval(&args[0], scope)?;
        Ok(boolean(
            other.iter().all(|b| input.iter().any(|a| equals(a, b) == Some(true))),
        ))
    }),
    f("count", 0, 0, |_, input, _, _| {
        Ok(vec![Value::Integer(input.len() as i64)])
    }),
    f("distinct", 0, 0, |_, input, _, _| Ok(distinct(input))),
    f("isDistinct", 0, 0, |_, input, _, _| {
        let n = input.len();
        Ok(boolean(distinct(input).len() == n))
    }),
    // Filtering and projection
    f("where", 1, 1, |e, input, args, _| filter(e, input, &args[0])),
    f("select", 1, 1, |e, input, args, _| {
        let mut out = Vec::new();
        for (i, item) in input.into_iter().enumerate() {
            out.extend(e.eval(&args[0], &item_scope(item, i))?);
        }
        Ok(out)
    }),
    f("repeat", 1, 1, |e, input, args, _| {
        let mut out: Collection = Vec::new();
        let mut frontier = input;
        let mut rounds = 0;
        while !frontier.is_empty() && rounds < 1000 {
            let mut next = Vec::new();
            for (i, item) in frontier.into_iter().enumerate() {
                for child in e.eval(&args[0], &item_scope(item, i))? {
                    if !out.iter().any(|o| same_node(o, &child)) {
                        out.push(child.clone());
                        next.push(child);
                    }
                }
            }
            frontier = next;
            rounds += 1;
        }
        Ok(out)
    }),
    f("ofType", 1, 1, |e, input, args, _| {
        let spec = type_argument(&args[0])?;
        e.check_type(&spec)?;
        Ok(input.into_iter().filter(|v| e.is_type_exact(v, &spec)).collect())
    }),
    f("as", 1, 1, |e, input, args, _| {
        let spec = type_argument(&args[0])?;
        e.check_type(&spec)?;
        Ok(input.into_iter().filter(|v| e.is_type_exact(v, &spec)).collect())
    }),
    f("is", 1, 1, |e, input, args, _| {
        let spec = type_argument(&args[0])?;
        e.check_type(&spec)?;
        match singleton(&input, "is()")? {
            None => Ok(Vec::new()),
            Some(v) => Ok(boolean(e.is_type(v, &spec))),
        }
    }),
    // Subsetting
    f("single", 0, 0, |_, input, _, _| {
        if input.len() > 1 {
            return Err(eval_error(None, format!("single() on {} items", input.len())));
        }
        Ok(input)
    }),
    f("first", 0, 0, |_, input, _, _| Ok(input.into_iter().take(1).collect())),
    f("last", 0, 0, |_, mut input, _, _| Ok(input.pop().into_iter().collect())),
    f("tail", 0, 0, |_, input, _, _| Ok(input.into_iter().skip(1).collect())),
    f("skip", 1, 1, |e, input, args, scope| {
        let n = singleton_integer(&e.eval(&args[0], scope)?, "skip()")?.unwrap_or(0);
        Ok(input.into_iter().skip(n.max(0) as usize).collect())
    }),
    f("take", 1, 1, |e, input, args, scope| {
        let n = singleton_integer(&e.eval(&args[0], scope)?, "take()")?.unwrap_or(0);
        Ok(input.into_iter().take(n.max(0) as usize).collect())
    }),
    f("intersect", 1, 1, |e, input, args, scope| {
        let other = e.eval(&args[0], scope)?;
        Ok(distinct(
            input
                .into_iter()
                .filter(|a| other.iter().any(|b| equals(a, b) == Some(true))),
        ))
    }),
    f("exclude", 1, 1, |e, input, args, scope| {
        let other = e.eval(&args[0], scope)?;
        Ok(input
            .into_iter()
            .filter(|a| !other.iter().any(|b| equals(a, b) == Some(true)))
            .collect())
    }),
    f("union", 1, 1, |e, input, args, scope| {
        let other = e.eval(&args[0], scope)?;
        Ok(distinct(input.into_iter().chain(other)))
    }),
    f("combine", 1, 1, |e, mut input, args, scope| {
        input.extend(e.eval(&args[0], scope)?);
        Ok(input)
    }),
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
            (Value::Quantity(x), Value::Quantity(y)) => Ok(boolean(super::units::comparable(&x.unit, &y.unit))),
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
    // Strings
    f("indexOf", 1, 1, |e, input, args, scope| {
        string_fn(e, input, args, scope, |s, a| {
            let a = a[0].as_deref()?;
            Some(Value::Integer(
                s.find(a).map_or(-1, |byte| s[..byte].chars().count() as i64),
            ))
        })
    }),
    f("substring", 1, 2, |e, input, args, scope| {
        let Some(s) = singleton_string(&input, "substring()")? else {
            return Ok(Vec::new());
        };
        let start = singleton_integer(&e.eval(&args[0], scope)?, "substring()")?;
        let length = match args.get(1) {
            Some(a) => singleton_integer(&e.eval(a, scope)?, "substring()")?,
            None => None,
        };
        let chars: Vec<char> = s.chars().collect();
        let Some(start) = start.filter(|s| *s >= 0 && (*s as usize) < chars.len()) else {
            return Ok(Vec::new());
        };
        let end = match length {
            Some(l) => (start + l.max(0)).min(chars.len() as i64),
            None => chars.len() as i64,
        };
        Ok(vec![Value::String(
            chars[start as usize..end as usize].iter().collect(),
        )])
    }),
    f("startsWith", 1, 1, |e, input, args, scope| {
        string_fn(e, input, args, scope, |s, a| {
            Some(Value::Boolean(s.starts_with(a[0].as_deref()?)))
        })
    }),
    f("endsWith", 1, 1, |e, input, args, scope| {
        string_fn(e, input, args, scope, |s, a| {
            Some(Value::Boolean(s.ends_with(a[0].as_deref()?)))
        })
    }),
    f("contains", 1, 1, |e, input, args, scope| {
        string_fn(e, input, args, scope, |s, a| {
            Some(Value::Boolean(s.contains(a[0].as_deref()?)))
        })
    }),
    f("upper", 0, 0, |e, input, args, scope| {
        string_fn(e, input, args, scope, |s, _| Some(Value::String(s.to_uppercase())))
    }),
    f("lower", 0, 0, |e, input, args, scope| {
        string_fn(e, input, args, scope, |s, _| Some(Value::String(s.to_lowercase())))
    }),
    f("trim", 0, 0, |e, input, args, scope| {
        string_fn(e, input, args, scope, |s, _| Some(Value::String(s.trim().to_string())))
    }),
    f("length", 0, 0, |e, input, args, scope| {
        string_fn(e, input, args, scope, |s, _| {
            Some(Value::Integer(s.chars().count() as i64))
        })
    }),
    f("toChars", 0, 0, |_, input, _, _| {
        let Some(s) = singleton_string(&input, "toChars()")? else {
            return Ok(Vec::new());
        };
        Ok(s.chars().map(|c| Value::String(c.to_string())).collect())
    }),
    f("replace", 2, 2, |e, input, args, scope| {
        string_fn(e, input, args, scope, |s, a| {
            let (from, to) = (a[0].as_deref()?, a[1].as_deref()?);
            Some(Value::String(if from.is_empty() {
                let mut out = to.to_string();
                for c in s.chars() {
                    out.push(c);
                    out.push_str(to);
                }
                out
            } else {
                s.replace(from, to)
            }))
        })
    }),
    f("matches", 1, 1, |e, input, args, scope| {
        regex_fn(e, input, args, scope, |s, re, _| Value::Boolean(re.is_match(s)))
    }),
    f("replaceMatches", 2, 2, |e, input, args, scope| {
        if e.eval(&args[1], scope)?.is_empty() {
            return Ok(Vec::new());
        }
        regex_fn(e, input, args, scope, |s, re, a| {
            if re.as_str() == "(?s)" {
                return Value::String(s.to_string());
            }
            Value::String(re.replace_all(s, a.as_deref().unwrap_or("")).into_owned())
        })
    }),
    f("matchesFull", 1, 1, |e, input, args, scope| {
        let Some(pattern) = singleton_string(&e.eval(&args[0], scope)?, "matchesFull()")? else {
            return Ok(Vec::new());
        };
        let Some(s) = singleton_string(&input, "matchesFull()")? else {
            return Ok(Vec::new());
        };
        let re = regex::Regex::new(&format!("(?s)^(?:{pattern})$"))
            .map_err(|err| eval_error(None, format!("invalid regex '{pattern}': {err}")))?;
        Ok(boolean(re.is_match(&s)))
    }),
    f("encode", 1, 1, |e, input, args, scope| {
        string_fn(e, input, args, scope, |s, a| {
            encode(s.as_bytes(), a[0].as_deref()?).map(Value::String)
        })
    }),
    f("decode", 1, 1, |e, input, args, scope| {
        string_fn(e, input, args, scope, |s, a| {
            decode(s, a[0].as_deref()?)
                .and_then(|b| String::from_utf8(b).ok())
                .map(Value::String)
        })
    }),
    f("escape", 1, 1, |e, input, args, scope| {
        string_fn(e, input, args, scope, |s, a| match a[0].as_deref()? {
            "html" => Some(Value::String(
                s.replace('&', "&amp;")
                    .replace('<', "&lt;")
                    .replace('>', "&gt;")
                    .replace('"', "&quot;"),
            )),
            "json" => Some(Value::String(s.replace('\\', "\\\\").replace('"', "\\\""))),
            _ => None,
        })
    }),
    f("unescape", 1, 1, |e, input, args, scope| {
        string_fn(e, input, args, scope, |s, a| match a[0].as_deref()? {
            "html" => Some(Value::String(
                s.replace("&quot;", "\"")
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&#39;", "'")
                    .replace("&amp;", "&"),
            )),
            "json" => Some(Value::String(s.replace("\\\"", "\"").replace("\\\\", "\\"))),
            _ => None,
        })
    }),
    f("split", 1, 1, |e, input, args, scope| {
        let Some(s) = singleton_string(&input, "split()")? else {
            return Ok(Vec::new());
        };
        let Some(sep) = singleton_string(&e.eval(&args[0], scope)?, "split()")? else {
            return Ok(Vec::new());
        };
        Ok(s.split(sep.as_str()).map(|p| Value::String(p.to_string())).collect())
    }),
    f("join", 0, 1, |e, input, args, scope| {
        if input.is_empty() {
            return Ok(Vec::new());
        }
        let sep = match args.first() {
            Some(a) => singleton_string(&e.eval(a, scope)?, "join()")?.unwrap_or_default(),
            None => String::new(),
        };
        let parts: Vec<String> = input.iter().filter_map(Value::to_fhirpath_string).collect();
        Ok(vec![Value::String(parts.join(&sep))])
    }),
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
    // FHIR-specific
    f("extension", 1, 1, |e, input, args, scope| {
        let Some(url) = singleton_string(&e.eval(&args[0], scope)?, "extension()")? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in &input {
            let mut extensions = Vec::new();
            e.navigate(item, "extension", false, &mut extensions);
            out.extend(extensions.into_iter().filter(|x| match x {
                Value::Node(n) => n.json.get("url").and_then(JsonValue::as_str) == Some(url.as_str()),
                _ => false,
            }));
        }
        Ok(out)
    }),
    f("hasValue", 0, 0, |_, input, _, _| {
        Ok(boolean(input.len() == 1 && input[0].is_primitive()))
    }),
    f("getValue", 0, 0, |_, input, _, _| {
        Ok(if input.len() == 1 && input[0].is_primitive() {
            vec![input[0].to_system()]
        } else {
            Vec::new()
        })
    }),
    f("resolve", 0, 0, |_, input, _, _| {
        Ok(input
            .iter()
            .filter_map(|v| match v {
                Value::Node(n) => {
                    let (resource_type, id) = reference_target(n.json)?;
                    Some(Value::ReferenceTarget {
                        resource_type,
                        id: id.to_string(),
                    })
                }
                _ => None,
            })
            .collect())
    }),
    f("getResourceKey", 0, 0, |_, input, _, _| {
        Ok(input
            .iter()
            .filter_map(|v| match v {
                Value::Node(n) => resource_key(n),
                _ => None,
            })
            .collect())
    }),
    f("getReferenceKey", 0, 1, |_, input, args, _| {
        let wanted = match args.first() {
            Some(a) => Some(type_argument(a)?.name),
            None => None,
        };
        Ok(input
            .iter()
            .filter_map(|v| match v {
                Value::Node(n) => reference_key(n, wanted.as_deref()),
                _ => None,
            })
            .collect())
    }),
    f("lowBoundary", 0, 1, |e, input, args, scope| {
        let precision = match args.first() {
            Some(a) => singleton_integer(&e.eval(a, scope)?, "lowBoundary()")?,
            None => None,
        };
        boundary(&input, true, precision)
    }),
    f("highBoundary", 0, 1, |e, input, args, scope| {
        let precision = match args.first() {
            Some(a) => singleton_integer(&e.eval(a, scope)?, "highBoundary()")?,
            None => None,
        };
        boundary(&input, false, precision)
    }),
];

/// Calls function `name` on `input`.
pub fn call<'a>(
    e: &Evaluator<'a, '_>,
    name: &str,
    pos: usize,
    input: Collection<'a>,
    args: &[Expr],
    scope: &Scope<'a>,
) -> Result<Collection<'a>, FhirPathError> {
    let Some(function) = lookup(name) else {
        return Err(FhirPathError::UnknownFunction {
            name: name.to_string(),
            pos,
        });
    };
    if args.len() < function.min_args || args.len() > function.max_args {
        return Err(eval_error(
            Some(pos),
            format!(
                "{name}() takes {} argument(s), got {}",
                if function.min_args == function.max_args {
                    function.min_args.to_string()
                } else {
                    format!("{}-{}", function.min_args, function.max_args)
                },
                args.len()
            ),
        ));
    }
    (function.eval)(e, input, args, scope).map_err(|err| match err {
        FhirPathError::Evaluation { message, pos: None } => FhirPathError::Evaluation {
            message,
            pos: Some(pos),
        },
        other => other,
    })
}

/// `getResourceKey()` of one node: the id of a resource node.
pub(super) fn resource_key<'a>(node: &Node<'a>) -> Option<Value<'a>> {
    resource_key_str(node).map(|s| Value::String(s.to_string()))
}

/// `getResourceKey()` of one node, borrowed from the resource.
pub(super) fn resource_key_str<'a>(node: &Node<'a>) -> Option<&'a str> {
    node.json.get("resourceType")?;
    node.json.get("id")?.as_str()
}

/// `getReferenceKey([wanted])` of one Reference node: the target's id, if
/// its type (from the reference text, else `Reference.type`) is `wanted`.
pub(super) fn reference_key<'a>(node: &Node<'a>, wanted: Option<&str>) -> Option<Value<'a>> {
    reference_key_str(node, wanted).map(|s| Value::String(s.to_string()))
}

/// `getReferenceKey([wanted])` of one Reference node, borrowed from the
/// resource.
pub(super) fn reference_key_str<'a>(node: &Node<'a>, wanted: Option<&str>) -> Option<&'a str> {
    let target = parse_reference(node.json.get("reference")?.as_str()?)?;
    let t = target.resource_type.or_else(|| reference_type(node));
    if let Some(w) = wanted
        && t != Some(w)
    {
        return None;
    }
    Some(target.id)
}

/// [`reference_key_str`] with `wanted` a resource type (so a reference
/// naming it needs no look-up of the name it writes).
pub(super) fn reference_key_of_type<'a>(node: &Node<'a>, wanted: &'static str) -> Option<&'a str> {
    let (written, id) = split_reference(node.json.get("reference")?.as_str()?)?;
    match written {
        Some(name) => (name == wanted).then_some(id),
        None => (reference_type(node) == Some(wanted)).then_some(id),
    }
}

/// `Reference.type`, if it names a resource type.
fn reference_type(node: &Node<'_>) -> Option<&'static str> {
    node.json
        .get("type")?
        .as_str()
        .and_then(|t| crate::fhir::ResourceTypes::r4().ok()?.get(t))
}

/// The target type and id of a Reference node, as `resolve()` sees them:
/// the type from the reference text, or from `Reference.type` for a
/// `urn:uuid:` reference.
pub(crate) fn reference_target<'j>(reference: &'j JsonValue<'_>) -> Option<(&'static str, &'j str)> {
    let target = parse_reference(reference.get("reference")?.as_str()?)?;
    let resource_type = match target.resource_type {
        Some(t) => t,
        None => crate::fhir::ResourceTypes::r4()
            .ok()?
            .get(reference.get("type")?.as_str()?)?,
    };
    Some((resource_type, target.id))
}

/// The function called `name`: a hash lookup, since a linear scan of
/// [`FUNCTIONS`] by name ran on every call of every evaluation.
fn lookup(name: &str) -> Option<&'static Function> {
    static BY_NAME: std::sync::OnceLock<crate::fhir::model::FastMap<&'static str, &'static Function>> =
        std::sync::OnceLock::new();
    BY_NAME
        .get_or_init(|| FUNCTIONS.iter().map(|f| (f.name, f)).collect())
        .get(name)
        .copied()
}

/// True if `name` is a known function (for validation without evaluation).
pub fn is_function(name: &str) -> bool {
    lookup(name).is_some()
}

fn boolean<'a>(b: bool) -> Collection<'a> {
    vec![Value::Boolean(b)]
}

fn booleans(input: &Collection<'_>) -> Result<Vec<bool>, FhirPathError> {
    input
        .iter()
        .map(|v| match v.to_system() {
            Value::Boolean(b) => Ok(b),
            other => Err(eval_error(
                None,
                format!("expected booleans, got {}", other.type_name()),
            )),
        })
        .collect()
}

fn item_scope(item: Value<'_>, index: usize) -> Scope<'_> {
    Scope {
        this: vec![item],
        index: Some(index as i64),
        total: None,
    }
}

fn filter<'a>(e: &Evaluator<'a, '_>, input: Collection<'a>, criterion: &Expr) -> Result<Collection<'a>, FhirPathError> {
    let mut out = Vec::new();
    for (i, item) in input.into_iter().enumerate() {
        if to_boolean(&e.eval(criterion, &item_scope(item.clone(), i))?)? == Some(true) {
            out.push(item);
        }
    }
    Ok(out)
}

fn same_node(a: &Value<'_>, b: &Value<'_>) -> bool {
    match (a, b) {
        (Value::Node(x), Value::Node(y)) => std::ptr::eq(x.json, y.json),
        _ => equals(a, b) == Some(true),
    }
}

pub(crate) fn type_argument(arg: &Expr) -> Result<TypeSpecifier, FhirPathError> {
    match arg {
        Expr::Identifier(name) => Ok(TypeSpecifier {
            namespace: None,
            name: name.clone(),
        }),
        Expr::Member(ns, name) => match ns.as_ref() {
            Expr::Identifier(namespace) => Ok(TypeSpecifier {
                namespace: Some(namespace.clone()),
                name: name.clone(),
            }),
            _ => Err(eval_error(None, "expected a type name")),
        },
        Expr::Literal(super::ast::Literal::String(name)) => Ok(TypeSpecifier {
            namespace: None,
            name: name.clone(),
        }),
        _ => Err(eval_error(None, "expected a type name")),
    }
}

fn children<'a>(e: &Evaluator<'a, '_>, input: &Collection<'a>) -> Collection<'a> {
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

fn now() -> DateTimeValue {
    let n = chrono::Utc::now();
    DateTimeValue::parse(&n.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| DateTimeValue::start_of_year(1970))
}

fn singleton_string(c: &Collection<'_>, what: &str) -> Result<Option<String>, FhirPathError> {
    match singleton(c, what)? {
        None => Ok(None),
        Some(v) => match v.to_system() {
            Value::String(s) => Ok(Some(s)),
            other => Err(eval_error(
                None,
                format!("{what} expects a string, got {}", other.type_name()),
            )),
        },
    }
}

fn string_fn<'a>(
    e: &Evaluator<'a, '_>,
    input: Collection<'a>,
    args: &[Expr],
    scope: &Scope<'a>,
    op: impl Fn(&str, &[Option<String>]) -> Option<Value<'a>>,
) -> Result<Collection<'a>, FhirPathError> {
    let Some(s) = singleton_string(&input, "string function")? else {
        return Ok(Vec::new());
    };
    let mut values = Vec::new();
    for arg in args {
        let v = singleton_string(&e.eval(arg, scope)?, "string function argument")?;
        if v.is_none() {
            return Ok(Vec::new());
        }
        values.push(v);
    }
    Ok(op(&s, &values).into_iter().collect())
}

fn regex_fn<'a>(
    e: &Evaluator<'a, '_>,
    input: Collection<'a>,
    args: &[Expr],
    scope: &Scope<'a>,
    op: impl Fn(&str, &regex::Regex, &Option<String>) -> Value<'a>,
) -> Result<Collection<'a>, FhirPathError> {
    let Some(s) = singleton_string(&input, "regex function")? else {
        return Ok(Vec::new());
    };
    let Some(pattern) = singleton_string(&e.eval(&args[0], scope)?, "regex")? else {
        return Ok(Vec::new());
    };
    let replacement = match args.get(1) {
        Some(a) => singleton_string(&e.eval(a, scope)?, "replacement")?,
        None => None,
    };
    let re = regex::Regex::new(&format!("(?s){pattern}"))
        .map_err(|err| eval_error(None, format!("invalid regex '{pattern}': {err}")))?;
    Ok(vec![op(&s, &re, &replacement)])
}

fn decimal_of(v: &Value<'_>) -> Option<Decimal> {
    match v {
        Value::Integer(i) => Some(Decimal::from(*i)),
        Value::Decimal(d) => Some(*d),
        _ => None,
    }
}

fn float(d: Decimal) -> Option<f64> {
    d.to_f64()
}

fn math<'a>(
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

fn math_int<'a>(
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

fn convert<'a>(
    input: &Collection<'a>,
    what: &str,
    op: fn(&Value<'a>) -> Option<Value<'a>>,
) -> Result<Collection<'a>, FhirPathError> {
    Ok(singleton(input, what)?.and_then(op).into_iter().collect())
}

fn converts<'a>(
    input: &Collection<'a>,
    what: &str,
    op: fn(&Value<'a>) -> Option<Value<'a>>,
) -> Result<Collection<'a>, FhirPathError> {
    Ok(singleton(input, what)?
        .map(|v| boolean(op(v).is_some()))
        .unwrap_or_default())
}

fn to_integer<'a>(v: &Value<'a>) -> Option<Value<'a>> {
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

fn to_decimal<'a>(v: &Value<'a>) -> Option<Value<'a>> {
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

fn to_bool<'a>(v: &Value<'a>) -> Option<Value<'a>> {
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

fn to_date<'a>(v: &Value<'a>) -> Option<Value<'a>> {
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

fn to_datetime<'a>(v: &Value<'a>) -> Option<Value<'a>> {
    match v.to_system() {
        Value::Date(d) | Value::DateTime(d) => Some(Value::DateTime(d)),
        Value::String(s) => DateTimeValue::parse(&s).map(Value::DateTime),
        _ => None,
    }
}

fn to_time<'a>(v: &Value<'a>) -> Option<Value<'a>> {
    match v.to_system() {
        Value::Time(t) => Some(Value::Time(t)),
        Value::String(s) => TimeValue::parse(&s).map(Value::Time),
        _ => None,
    }
}

fn to_quantity<'a>(v: &Value<'a>) -> Option<Value<'a>> {
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
            } else if super::value::is_calendar_word(unit) {
                unit.to_string()
            } else {
                return None;
            };
            Some(Value::Quantity(Quantity { value, unit }))
        }
        _ => None,
    }
}

fn order(a: &Value<'_>, b: &Value<'_>, error: &mut Option<String>) -> std::cmp::Ordering {
    match super::value::compare(a, b) {
        Ok(Some(o)) => o,
        Ok(None) => std::cmp::Ordering::Equal,
        Err(e) => {
            error.get_or_insert(e);
            std::cmp::Ordering::Equal
        }
    }
}

fn date_digits(p: Precision) -> i64 {
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

fn time_digits(p: Precision) -> i64 {
    match p {
        Precision::Hour => 2,
        Precision::Minute => 4,
        Precision::Second => 6,
        _ => 9,
    }
}

fn date_precision(digits: i64) -> Option<Precision> {
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

fn encode(bytes: &[u8], format: &str) -> Option<String> {
    use base64::Engine;
    Some(match format {
        "base64" => base64::engine::general_purpose::STANDARD.encode(bytes),
        "urlbase64" => base64::engine::general_purpose::URL_SAFE.encode(bytes),
        "hex" => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        _ => return None,
    })
}

fn decode(text: &str, format: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    match format {
        "base64" => base64::engine::general_purpose::STANDARD.decode(text).ok(),
        "urlbase64" => base64::engine::general_purpose::URL_SAFE.decode(text).ok(),
        "hex" => (0..text.len())
            .step_by(2)
            .map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect(),
        _ => None,
    }
}

/// Rounds `d` to `scale` digits toward −∞ (`low`) or +∞.
fn round_to(d: Decimal, scale: u32, low: bool) -> Decimal {
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
fn boundary<'a>(input: &Collection<'a>, low: bool, precision: Option<i64>) -> Result<Collection<'a>, FhirPathError> {
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
