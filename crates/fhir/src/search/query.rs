//! Parsing FHIR search expressions (`Type?name[:modifier]=[prefix]value&…`) as
//! member-filters and `_typeFilter`s use them, validated against the registry.

use rust_decimal::Decimal;

use super::SearchError;
use super::registry::{ParamType, SearchParam, SearchRegistry};
use crate::fhir::ResourceTypes;
use crate::fhirpath::temporal::DateTimeValue;
use crate::fhirpath::value::parse_decimal;

/// Parameters that shape a result set rather than select resources: they make
/// no sense in a cohort definition and are refused.
const RESULT_PARAMETERS: [&str; 13] = [
    "_sort",
    "_count",
    "_include",
    "_revinclude",
    "_elements",
    "_summary",
    "_total",
    "_contained",
    "_containedType",
    "_format",
    "_pretty",
    "_score",
    "_graph",
];

/// A comparison prefix of date, number and quantity values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// A parameter modifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modifier {
    /// `:missing` (value `true`/`false`).
    Missing,
    /// `:not` (tokens): also matches resources without a value.
    Not,
    /// `:exact` (strings): whole value, case-sensitive.
    Exact,
    /// `:contains` (strings): substring.
    Contains,
    /// `:text` (tokens): display text.
    Text,
    /// `:of-type` (identifier tokens): `type-system|type-code|value`.
    OfType,
    /// `:below` (uri, token).
    Below,
    /// `:above` (uri, token).
    Above,
    /// `:Patient` etc. (references): the target type.
    TargetType(&'static str),
    /// `:identifier` (references): match the reference's identifier.
    Identifier,
}

/// One value of a clause (values of a clause are ORed).
#[derive(Debug, Clone, PartialEq)]
pub enum SearchValue {
    /// `code`, `system|code`, `|code`, `system|`: `system` `None` = any system,
    /// `Some("")` = no system; `code` `None` = any code.
    Token {
        /// System constraint.
        system: Option<String>,
        /// Code constraint.
        code: Option<String>,
    },
    /// `:of-type` identifier value.
    OfType {
        /// Identifier type system.
        system: String,
        /// Identifier type code.
        code: String,
        /// Identifier value.
        value: String,
    },
    /// A date with its precision range.
    Date {
        /// Comparison.
        prefix: Prefix,
        /// The value (its precision sets the range).
        value: DateTimeValue,
    },
    /// A number.
    Number {
        /// Comparison.
        prefix: Prefix,
        /// The value (its scale sets the range for `eq`).
        value: Decimal,
    },
    /// `[prefix]number[|system|code]`.
    Quantity {
        /// Comparison.
        prefix: Prefix,
        /// The number.
        value: Decimal,
        /// System, if given.
        system: Option<String>,
        /// Code or unit, if given.
        code: Option<String>,
    },
    /// A string (prefix match unless `:exact` / `:contains`).
    String(String),
    /// A reference: `Type/id`, a bare id, or an absolute URL.
    Reference {
        /// Target type, if given.
        resource_type: Option<String>,
        /// Target id (or the whole URL for absolute references).
        id: String,
    },
    /// A URI.
    Uri(String),
    /// `:missing=true|false`.
    Missing(bool),
    /// A composite value: one part per component (`code$value`).
    Composite(Vec<SearchValue>),
}

/// What a clause tests.
#[derive(Debug, Clone)]
pub enum ClauseKind {
    /// A parameter of the resource itself.
    Param {
        /// The parameter.
        param: SearchParam,
        /// Its modifier.
        modifier: Option<Modifier>,
        /// ORed values.
        values: Vec<SearchValue>,
    },
    /// `ref:Type.inner=…`: a resource referenced through `reference` matches `inner`.
    Chain {
        /// The reference parameter of this resource.
        reference: SearchParam,
        /// The type of the referenced resource.
        target_type: &'static str,
        /// The clause on the referenced resource.
        inner: Box<Clause>,
    },
    /// `_has:Type:ref:inner=…`: a resource of `source_type` whose `reference`
    /// points here matches `inner`.
    Has {
        /// The referring type.
        source_type: &'static str,
        /// Its reference parameter.
        reference: SearchParam,
        /// The clause on the referring resource.
        inner: Box<Clause>,
    },
}

/// One `name=value` of a query.
#[derive(Debug, Clone)]
pub struct Clause {
    /// The name as written (for messages).
    pub name: String,
    /// What it tests.
    pub kind: ClauseKind,
}

/// A parsed search: all clauses must hold for the same resource.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// The resource type searched.
    pub resource_type: &'static str,
    /// ANDed clauses (a repeated parameter is two clauses).
    pub clauses: Vec<Clause>,
}

impl SearchQuery {
    /// Every resource type whose data the search reads: its own type, the
    /// targets of chains and the sources of `_has`, at any depth (what an
    /// authorization check must cover).
    pub fn types_read(&self) -> Vec<&'static str> {
        fn walk(clause: &Clause, out: &mut Vec<&'static str>) {
            match &clause.kind {
                ClauseKind::Param { .. } => {}
                ClauseKind::Chain { target_type, inner, .. } => {
                    out.push(target_type);
                    walk(inner, out);
                }
                ClauseKind::Has { source_type, inner, .. } => {
                    out.push(source_type);
                    walk(inner, out);
                }
            }
        }
        let mut out = vec![self.resource_type];
        for clause in &self.clauses {
            walk(clause, &mut out);
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

fn percent_decode(text: &str, whole: &str) -> Result<String, SearchError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                // A `%` that starts no escape is literal: member-filters are
                // often written unencoded, with UCUM `%` units.
                let hex = text
                    .get(i + 1..i + 3)
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| SearchError::syntax(whole, "percent-encoding decodes to invalid UTF-8"))
}

/// Splits at unescaped `sep`, resolving `\<sep>`; other escapes (`\,` `\|`
/// `\$` `\\`) are kept for the next split level.
fn split_escaped(text: &str, sep: char, whole: &str) -> Result<Vec<String>, SearchError> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e) if e == sep => current.push(e),
                Some(e @ (',' | '|' | '$' | '\\')) => {
                    current.push('\\');
                    current.push(e);
                }
                _ => {
                    return Err(SearchError::syntax(
                        whole,
                        "a backslash must escape ',', '|', '$' or '\\'",
                    ));
                }
            }
        } else if c == sep {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    Ok(parts)
}

/// Resolves the remaining escapes of a final value.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(e) = chars.next() {
                out.push(e);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn parse_prefix(text: &str) -> (Prefix, &str) {
    const PREFIXES: [(&str, Prefix); 9] = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for (p, prefix) in PREFIXES {
        if let Some(rest) = text.strip_prefix(p)
            && rest.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
        {
            return (prefix, rest);
        }
    }
    (Prefix::Eq, text)
}

fn allowed_modifier(t: ParamType, m: &Modifier) -> bool {
    use Modifier::*;
    match m {
        Missing => true,
        Not | Text | Below | Above | OfType => {
            t == ParamType::Token || (t == ParamType::Uri && matches!(m, Below | Above))
        }
        Exact | Contains => t == ParamType::String,
        TargetType(_) | Identifier => t == ParamType::Reference,
    }
}

fn parse_modifier(text: &str) -> Option<Modifier> {
    Some(match text {
        "missing" => Modifier::Missing,
        "not" => Modifier::Not,
        "exact" => Modifier::Exact,
        "contains" => Modifier::Contains,
        "text" => Modifier::Text,
        "of-type" => Modifier::OfType,
        "below" => Modifier::Below,
        "above" => Modifier::Above,
        "identifier" => Modifier::Identifier,
        other => Modifier::TargetType(ResourceTypes::r4().ok()?.get(other)?),
    })
}

struct Parser<'r> {
    registry: &'r SearchRegistry,
    whole: String,
}

impl Parser<'_> {
    fn param(&self, resource_type: &str, name: &str) -> Result<SearchParam, SearchError> {
        if RESULT_PARAMETERS.contains(&name) {
            return Err(SearchError::ResultParameter {
                param: name.to_string(),
                expression: self.whole.clone(),
            });
        }
        match self.registry.get(resource_type, name) {
            Some(p) if p.is_supported() => Ok(p.clone()),
            Some(p) => Err(SearchError::Unsupported {
                param: name.to_string(),
                resource_type: resource_type.to_string(),
                reason: format!("its expression '{}' cannot be evaluated", p.expression),
            }),
            None => Err(SearchError::UnknownParameter {
                param: name.to_string(),
                resource_type: resource_type.to_string(),
                supported: self
                    .registry
                    .supported(resource_type)
                    .iter()
                    .map(|p| p.code.clone())
                    .collect(),
            }),
        }
    }

    /// Parses `name` (with chain / modifier) and `raw_value` on `resource_type`.
    fn clause(&self, resource_type: &'static str, name: &str, raw_value: &str) -> Result<Clause, SearchError> {
        if let Some(rest) = name.strip_prefix("_has:") {
            return self.has_clause(name, rest, raw_value);
        }
        // Chains: `subject:Patient.gender` or `subject.gender`.
        let (head, chained) = match name.split_once('.') {
            Some((head, rest)) => (head, Some(rest)),
            None => (name, None),
        };
        let (code, modifier_text) = match head.split_once(':') {
            Some((c, m)) => (c, Some(m)),
            None => (head, None),
        };
        let param = self.param(resource_type, code)?;
        match chained {
            Some(rest) => self.chain_clause(param, name, code, modifier_text, rest, raw_value),
            None => self.param_clause(param, name, code, modifier_text, raw_value),
        }
    }

    /// `_has:Type:reference:parameter=value` (`rest` follows `_has:`).
    fn has_clause(&self, name: &str, rest: &str, raw_value: &str) -> Result<Clause, SearchError> {
        let mut parts = rest.splitn(3, ':');
        let (Some(source), Some(reference), Some(inner)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SearchError::syntax(
                &self.whole,
                format!("'{name}': _has needs _has:Type:reference:parameter"),
            ));
        };
        let source_type =
            ResourceTypes::r4()
                .ok()
                .and_then(|t| t.get(source))
                .ok_or_else(|| SearchError::UnknownType {
                    resource_type: source.to_string(),
                })?;
        let reference_param = self.param(source_type, reference)?;
        if reference_param.param_type != ParamType::Reference {
            return Err(SearchError::syntax(
                &self.whole,
                format!("'{reference}' of {source_type} is not a reference parameter"),
            ));
        }
        let inner = self.clause(source_type, inner, raw_value)?;
        Ok(Clause {
            name: name.to_string(),
            kind: ClauseKind::Has {
                source_type,
                reference: reference_param,
                inner: Box::new(inner),
            },
        })
    }

    /// `reference[:Type].parameter=value` (`rest` follows the dot).
    fn chain_clause(
        &self,
        param: SearchParam,
        name: &str,
        code: &str,
        modifier_text: Option<&str>,
        rest: &str,
        raw_value: &str,
    ) -> Result<Clause, SearchError> {
        if param.param_type != ParamType::Reference {
            return Err(SearchError::syntax(
                &self.whole,
                format!("'{code}' is not a reference, so '{name}' cannot chain"),
            ));
        }
        let target_type = self.chain_target(&param, name, code, modifier_text, rest)?;
        let inner = self.clause(target_type, rest, raw_value)?;
        Ok(Clause {
            name: name.to_string(),
            kind: ClauseKind::Chain {
                reference: param,
                target_type,
                inner: Box::new(inner),
            },
        })
    }

    /// The type a chain continues on: the `:Type` given, or the
    /// parameter's only target.
    fn chain_target(
        &self,
        param: &SearchParam,
        name: &str,
        code: &str,
        modifier_text: Option<&str>,
        rest: &str,
    ) -> Result<&'static str, SearchError> {
        let wanted = match (modifier_text, param.targets.as_slice()) {
            (Some(t), _) => t,
            (None, [single]) => single.as_str(),
            (None, _) => {
                return Err(SearchError::syntax(
                    &self.whole,
                    format!(
                        "'{name}': '{code}' may point to {}, name one: '{code}:Type.{rest}'",
                        param.targets.join(", ")
                    ),
                ));
            }
        };
        ResourceTypes::r4()
            .ok()
            .and_then(|types| types.get(wanted))
            .ok_or_else(|| SearchError::UnknownType {
                resource_type: wanted.to_string(),
            })
    }

    /// `parameter[:modifier]=value[,value…]`.
    fn param_clause(
        &self,
        param: SearchParam,
        name: &str,
        code: &str,
        modifier_text: Option<&str>,
        raw_value: &str,
    ) -> Result<Clause, SearchError> {
        let modifier = match modifier_text {
            None => None,
            Some(m) => {
                let modifier = parse_modifier(m)
                    .filter(|m| allowed_modifier(param.param_type, m))
                    .ok_or_else(|| SearchError::BadModifier {
                        param: code.to_string(),
                        modifier: m.to_string(),
                        expression: self.whole.clone(),
                    })?;
                Some(modifier)
            }
        };
        let values = split_escaped(raw_value, ',', &self.whole)?
            .iter()
            .map(|v| self.value(&param, modifier.as_ref(), v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Clause {
            name: name.to_string(),
            kind: ClauseKind::Param {
                param,
                modifier,
                values,
            },
        })
    }

    fn bad_value(&self, param: &SearchParam, value: &str, why: &str) -> SearchError {
        SearchError::BadValue {
            param: param.code.clone(),
            value: value.to_string(),
            reason: why.to_string(),
        }
    }

    fn value(&self, param: &SearchParam, modifier: Option<&Modifier>, raw: &str) -> Result<SearchValue, SearchError> {
        if raw.is_empty() {
            return Err(self.bad_value(param, raw, "empty value"));
        }
        if modifier == Some(&Modifier::Missing) {
            return match raw {
                "true" => Ok(SearchValue::Missing(true)),
                "false" => Ok(SearchValue::Missing(false)),
                _ => Err(self.bad_value(param, raw, ":missing takes true or false")),
            };
        }
        Ok(match param.param_type {
            ParamType::Token if modifier == Some(&Modifier::OfType) => {
                let parts = split_escaped(raw, '|', &self.whole)?;
                let [system, code, value] = parts.as_slice() else {
                    return Err(self.bad_value(param, raw, ":of-type takes type-system|type-code|value"));
                };
                SearchValue::OfType {
                    system: unescape(system),
                    code: unescape(code),
                    value: unescape(value),
                }
            }
            ParamType::Token => self.token_value(param, raw)?,
            ParamType::Date => {
                let (prefix, rest) = parse_prefix(raw);
                let value = DateTimeValue::parse(rest).ok_or_else(|| {
                    self.bad_value(
                        param,
                        raw,
                        "expected a date like 2020, 2020-01-31 or 2020-01-31T10:00:00Z",
                    )
                })?;
                SearchValue::Date { prefix, value }
            }
            ParamType::Number => {
                let (prefix, rest) = parse_prefix(raw);
                let value = parse_decimal(rest).ok_or_else(|| self.bad_value(param, raw, "expected a number"))?;
                SearchValue::Number { prefix, value }
            }
            ParamType::Quantity => self.quantity_value(param, raw)?,
            ParamType::String => SearchValue::String(unescape(raw)),
            ParamType::Uri => SearchValue::Uri(unescape(raw)),
            ParamType::Reference => self.reference_value(param, raw)?,
            ParamType::Composite => self.composite_value(param, raw)?,
            ParamType::Special => return Err(self.bad_value(param, raw, "special parameters are not supported")),
        })
    }

    /// A token value: `code`, `system|code`, `|code` or `system|`.
    fn token_value(&self, param: &SearchParam, raw: &str) -> Result<SearchValue, SearchError> {
        let parts = split_escaped(raw, '|', &self.whole)?;
        Ok(match parts.as_slice() {
            [code] => SearchValue::Token {
                system: None,
                code: Some(unescape(code)),
            },
            [system, code] => SearchValue::Token {
                system: Some(unescape(system)),
                code: (!code.is_empty()).then(|| unescape(code)),
            },
            _ => return Err(self.bad_value(param, raw, "a token is code, system|code, |code or system|")),
        })
    }

    /// A quantity value: `[prefix]number[|system|code]`.
    fn quantity_value(&self, param: &SearchParam, raw: &str) -> Result<SearchValue, SearchError> {
        let (prefix, rest) = parse_prefix(raw);
        let parts = split_escaped(rest, '|', &self.whole)?;
        let number = parts.first().map(String::as_str).unwrap_or_default();
        let value =
            parse_decimal(number).ok_or_else(|| self.bad_value(param, raw, "expected [prefix]number[|system|code]"))?;
        let (system, code) = match parts.as_slice() {
            [_] => (None, None),
            [_, system, code] => (
                (!system.is_empty()).then(|| unescape(system)),
                (!code.is_empty()).then(|| unescape(code)),
            ),
            _ => return Err(self.bad_value(param, raw, "expected [prefix]number[|system|code]")),
        };
        Ok(SearchValue::Quantity {
            prefix,
            value,
            system,
            code,
        })
    }

    /// A reference value: `Type/id` or an id.
    fn reference_value(&self, param: &SearchParam, raw: &str) -> Result<SearchValue, SearchError> {
        let text = unescape(raw);
        Ok(match crate::fhir::parse_reference(&text) {
            Some(target) if target.resource_type.is_some() => SearchValue::Reference {
                resource_type: target.resource_type.map(str::to_string),
                id: target.id.to_string(),
            },
            _ if !text.contains('/') => SearchValue::Reference {
                resource_type: None,
                id: text,
            },
            _ => return Err(self.bad_value(param, raw, "expected Type/id or an id")),
        })
    }

    /// A composite value: one part per component, separated by `$`.
    fn composite_value(&self, param: &SearchParam, raw: &str) -> Result<SearchValue, SearchError> {
        let parts = split_escaped(raw, '$', &self.whole)?;
        if parts.len() != param.components.len() {
            return Err(self.bad_value(
                param,
                raw,
                &format!("expected {} parts separated by '$'", param.components.len()),
            ));
        }
        let mut values = Vec::new();
        for (component, part) in param.components.iter().zip(&parts) {
            let Some((code, param_type)) = self.registry.by_url(&component.definition) else {
                return Err(self.bad_value(param, raw, "unknown composite component"));
            };
            let component_param = SearchParam {
                code: code.to_string(),
                param_type,
                expression: component.expression.clone(),
                path: None,
                targets: Vec::new(),
                components: Vec::new(),
                url: component.definition.clone(),
                derived: None,
            };
            values.push(self.value(&component_param, None, part)?);
        }
        Ok(SearchValue::Composite(values))
    }
}

/// Parses `Type?name=value&…`.
pub fn parse_search(expression: &str) -> Result<SearchQuery, SearchError> {
    let registry = SearchRegistry::r4().map_err(SearchError::Definitions)?;
    let parser = Parser {
        registry,
        whole: expression.to_string(),
    };
    let Some((type_name, query)) = expression.split_once('?') else {
        return Err(SearchError::syntax(expression, "expected Type?parameter=value"));
    };
    let resource_type =
        ResourceTypes::r4()
            .ok()
            .and_then(|t| t.get(type_name))
            .ok_or_else(|| SearchError::UnknownType {
                resource_type: type_name.to_string(),
            })?;
    if query.is_empty() {
        return Err(SearchError::syntax(expression, "no search parameters after '?'"));
    }
    let mut clauses = Vec::new();
    for pair in query.split('&') {
        if pair.is_empty() {
            continue;
        }
        let Some((name, value)) = pair.split_once('=') else {
            return Err(SearchError::syntax(expression, format!("'{pair}' has no '='")));
        };
        let name = percent_decode(name, expression)?;
        let value = percent_decode(value, expression)?;
        clauses.push(parser.clause(resource_type, &name, &value)?);
    }
    if clauses.is_empty() {
        return Err(SearchError::syntax(expression, "no search parameters after '?'"));
    }
    Ok(SearchQuery { resource_type, clauses })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(q: &SearchQuery, i: usize) -> Vec<SearchValue> {
        match &q.clauses[i].kind {
            ClauseKind::Param { values, .. } => values.clone(),
            other => panic!("not a param clause: {other:?}"),
        }
    }

    #[test]
    fn parses_tokens_dates_and_or_lists() {
        let q = parse_search(
            "Condition?code=http://snomed.info/sct|15777000,http://snomed.info/sct|38341003&onset-date=ge2010-01-01",
        )
        .unwrap();
        assert_eq!(q.resource_type, "Condition");
        assert_eq!(values(&q, 0).len(), 2);
        assert_eq!(
            values(&q, 0)[0],
            SearchValue::Token {
                system: Some("http://snomed.info/sct".into()),
                code: Some("15777000".into())
            }
        );
        assert!(matches!(values(&q, 1)[0], SearchValue::Date { prefix: Prefix::Ge, .. }));
        let q = parse_search("Condition?code=|abc&code=sys|").unwrap();
        assert_eq!(
            values(&q, 0)[0],
            SearchValue::Token {
                system: Some(String::new()),
                code: Some("abc".into())
            }
        );
        assert_eq!(
            values(&q, 1)[0],
            SearchValue::Token {
                system: Some("sys".into()),
                code: None
            }
        );
    }

    #[test]
    fn parses_escapes_percent_encoding_and_quantities() {
        let q = parse_search("Patient?name=a\\,b,c").unwrap();
        assert_eq!(
            values(&q, 0),
            [SearchValue::String("a,b".into()), SearchValue::String("c".into())]
        );
        let q = parse_search("Patient?address-state=New%20York").unwrap();
        assert_eq!(values(&q, 0), [SearchValue::String("New York".into())]);
        let q = parse_search("Observation?value-quantity=gt6.5|http://unitsofmeasure.org|%25").unwrap();
        assert!(
            matches!(&values(&q, 0)[0], SearchValue::Quantity { prefix: Prefix::Gt, code: Some(c), .. } if c == "%")
        );
        let q = parse_search("Observation?code-value-quantity=http://loinc.org|4548-4$gt6.5").unwrap();
        assert!(matches!(&values(&q, 0)[0], SearchValue::Composite(parts) if parts.len() == 2));
        // Unencoded `%` (a UCUM unit) and `+` (a zone offset) stay literal.
        let q = parse_search("Observation?value-quantity=6.5||%").unwrap();
        assert!(matches!(&values(&q, 0)[0], SearchValue::Quantity { code: Some(c), .. } if c == "%"));
        let q = parse_search("Patient?birthdate=2020-01-01T10:00:00+02:00").unwrap();
        assert!(matches!(&values(&q, 0)[0], SearchValue::Date { value, .. } if value.offset_minutes == Some(120)));
    }

    #[test]
    fn parses_modifiers_chains_and_has() {
        let q = parse_search("Condition?abatement-date:missing=true&code:not=123").unwrap();
        assert_eq!(values(&q, 0), [SearchValue::Missing(true)]);
        let q = parse_search("Condition?subject:Patient.gender=female").unwrap();
        assert!(matches!(
            &q.clauses[0].kind,
            ClauseKind::Chain {
                target_type: "Patient",
                ..
            }
        ));
        let q = parse_search("Patient?_has:Condition:patient:code=15777000").unwrap();
        assert!(matches!(
            &q.clauses[0].kind,
            ClauseKind::Has {
                source_type: "Condition",
                ..
            }
        ));
        let q = parse_search("Encounter?service-provider=Organization/8ad64ecf").unwrap();
        assert_eq!(
            values(&q, 0),
            [SearchValue::Reference {
                resource_type: Some("Organization".into()),
                id: "8ad64ecf".into()
            }]
        );
    }

    #[test]
    fn rejects_bad_expressions_with_clear_errors() {
        let err = |e: &str| parse_search(e).unwrap_err().to_string();
        assert!(err("Condition?").contains("no search parameters"));
        assert!(err("Foo?x=1").contains("'Foo' is not a FHIR R4 resource type"));
        assert!(err("Condition?code:bogus=1").contains("modifier ':bogus'"));
        assert!(err("Condition?code=a\\").contains("backslash"));
        let sort = err("Condition?_sort=date");
        assert!(sort.contains("_sort") && sort.contains("result parameter"), "{sort}");
        let unknown = err("Condition?colour=red");
        assert!(
            unknown.contains("'colour'") && unknown.contains("onset-date") && unknown.contains("code"),
            "{unknown}"
        );
        assert!(err("Condition?onset-date=yesterday").contains("expected a date"));
        assert!(err("Condition").contains("Type?parameter=value"));
        assert!(err("Condition?code").contains("no '='"));
    }

    #[test]
    fn parses_every_example_filter_of_the_spec_readme() {
        for filter in [
            "Patient?gender=female",
            "Patient?birthdate=ge1950-01-01&birthdate=lt1970-01-01",
            "Patient?address-state=MA",
            "Patient?address-state:exact=Massachusetts",
            "Patient?deceased=true",
            "Condition?code=http://snomed.info/sct|15777000",
            "Condition?code=http://snomed.info/sct|59621000,http://snomed.info/sct|38341003",
            "Condition?code=15777000&onset-date=ge2010-01-01",
            "Encounter?class=EMER",
            "Encounter?date=ge2019-01-01&date=lt2020-01-01",
            "Encounter?service-provider=Organization/8ad64ecf-c817-3753-bee7-006a8e662e06",
            "Encounter?practitioner=Practitioner/f5741899-c09e-3021-b936-435a3b478f4a",
            "Observation?code=http://loinc.org|4548-4&value-quantity=gt6.5",
            "Observation?code=http://loinc.org|39156-5&value-quantity=ge30",
            "Observation?code=http://loinc.org|72166-2&value-concept=http://snomed.info/sct|449868002,http://snomed.info/sct|8517006",
            "MedicationRequest?authoredon=ge2018-01-01&status=active",
            "Procedure?code=http://snomed.info/sct|73761001&date=ge2015-01-01",
            "Immunization?vaccine-code=http://hl7.org/fhir/sid/cvx|140&date=ge2019-01-01&date=lt2020-01-01",
            "MedicationRequest?status=stopped",
            "Coverage?beneficiary=Patient/x",
            "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999999709",
        ] {
            parse_search(filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
        }
    }

    #[test]
    fn never_panics_on_random_input() {
        // A deterministic xorshift generator over an alphabet rich in syntax.
        let alphabet: Vec<char> = "Condition?Patient&=|,\\$%:.-_abcgt2019 09XYZé%2".chars().collect();
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            let mut s = String::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 40) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                s.push(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            let _ = parse_search(&s);
            let _ = parse_search(&format!("Condition?{s}"));
        }
    }
}
