//! FHIRPath functions: string functions (`indexOf`, `substring`, `matches`, `replace`, `encode`, …).

use super::*;

/// The functions of this family.
pub(super) static FUNCTIONS: &[Function] = &[
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
];

pub(super) fn singleton_string(c: &Collection<'_>, what: &str) -> Result<Option<String>, FhirPathError> {
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

pub(super) fn string_fn<'a>(
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

pub(super) fn regex_fn<'a>(
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

pub(super) fn encode(bytes: &[u8], format: &str) -> Option<String> {
    use base64::Engine;
    Some(match format {
        "base64" => base64::engine::general_purpose::STANDARD.encode(bytes),
        "urlbase64" => base64::engine::general_purpose::URL_SAFE.encode(bytes),
        "hex" => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        _ => return None,
    })
}

pub(super) fn decode(text: &str, format: &str) -> Option<Vec<u8>> {
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
