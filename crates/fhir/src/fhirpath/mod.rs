//! A FHIRPath engine over [`crate::json::JsonValue`] resources.
//!
//! An expression is parsed once into an [`ast::Expr`] ([`FhirPath::parse`]),
//! checked for unknown functions, and then evaluated against any number of
//! resources. Values navigate with the FHIR R4 type model, so choice elements
//! (`value` → `valueQuantity`), `ofType(Quantity)` and primitive subtypes
//! (`code` vs `string`) work as FHIR defines them. Decimals keep their
//! precision (`rust_decimal`, scale preserved).

pub mod ast;
mod compiled;
pub mod eval;
mod functions;
pub mod lexer;
pub mod parser;
pub mod temporal;
pub mod units;
pub mod value;

use std::collections::HashMap;
use std::sync::OnceLock;

pub use compiled::{DirectPath, DirectValue};
pub use eval::{Evaluator, Scope};
use value::Node;
pub use value::{Collection, Value};

use crate::fhir::model::FhirModel;
use crate::json::JsonValue;

/// FHIRPath errors.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FhirPathError {
    /// The text is not valid FHIRPath.
    #[error("syntax error in FHIRPath '{expression}' at position {pos}: {message}")]
    Syntax {
        /// The expression.
        expression: String,
        /// Byte offset of the problem.
        pos: usize,
        /// What is wrong.
        message: String,
    },
    /// A call to a function this engine does not have.
    #[error("unknown FHIRPath function '{name}' at position {pos}")]
    UnknownFunction {
        /// The function's name.
        name: String,
        /// Byte offset of the call.
        pos: usize,
    },
    /// Evaluation failed (type error, wrong cardinality, …).
    #[error("{message}{}", pos.map(|p| format!(" (at position {p})")).unwrap_or_default())]
    Evaluation {
        /// What went wrong.
        message: String,
        /// Byte offset of the function involved, when known.
        pos: Option<usize>,
    },
    /// An error while evaluating a named expression.
    #[error("FHIRPath '{expression}': {source}")]
    InExpression {
        /// The expression.
        expression: String,
        /// The error.
        #[source]
        source: Box<FhirPathError>,
    },
    /// The bundled type model is unusable.
    #[error("FHIR type model unavailable: {0}")]
    Model(String),
}

/// A parsed FHIRPath expression.
#[derive(Debug, Clone)]
pub struct FhirPath {
    text: String,
    ast: ast::Expr,
    /// The expression compiled for the first focus type it was evaluated on
    /// (`None` inside: not a compilable shape). Foci of that type take the
    /// compiled path; others the general evaluator.
    compiled: OnceLock<Option<CompiledFor>>,
}

/// A compiled path and the focus type it was compiled for.
#[derive(Debug, Clone)]
struct CompiledFor {
    fhir_type: &'static str,
    owner: &'static str,
    /// Whether evaluation needs the focus as a scope (general functions).
    uses_scope: bool,
    path: compiled::CompiledPath,
}

impl PartialEq for FhirPath {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text && self.ast == other.ast
    }
}

/// Equality of model-interned names: the same pointer almost always.
fn same_name(a: &'static str, b: &'static str) -> bool {
    std::ptr::eq(a, b) || a == b
}

fn check_functions(expr: &ast::Expr, text: &str) -> Result<(), FhirPathError> {
    use ast::Expr::*;
    match expr {
        Function {
            target,
            name,
            args,
            pos,
        } => {
            if !functions::is_function(name) {
                return Err(FhirPathError::InExpression {
                    expression: text.to_string(),
                    source: Box::new(FhirPathError::UnknownFunction {
                        name: name.clone(),
                        pos: *pos,
                    }),
                });
            }
            if let Some(t) = target {
                check_functions(t, text)?;
            }
            // Type arguments (`ofType(Quantity)`) are names, not calls: still fine to walk.
            args.iter().try_for_each(|a| check_functions(a, text))
        }
        Member(t, _) | Negate(t) | Is(t, _) | As(t, _) => check_functions(t, text),
        Indexer(a, b) | Binary(_, a, b) => {
            check_functions(a, text)?;
            check_functions(b, text)
        }
        Literal(_) | Identifier(_) | External(_) | This | Index | Total => Ok(()),
    }
}

impl FhirPath {
    /// Parses and checks `text`.
    pub fn parse(text: &str) -> Result<Self, FhirPathError> {
        let ast = parser::parse(text)?;
        check_functions(&ast, text)?;
        Ok(Self {
            text: text.to_string(),
            ast,
            compiled: OnceLock::new(),
        })
    }

    /// This path compiled for foci of type `fhir_type` (children defined by
    /// `owner`; for a resource, its type) to a [`DirectPath`], if it is one
    /// of its shapes.
    pub fn direct(&self, fhir_type: &'static str, owner: &'static str) -> Option<DirectPath> {
        let model = FhirModel::r4().ok()?;
        DirectPath::compile(&self.ast, fhir_type, owner, model)
    }

    /// The FHIR type code and children owner of every item this path yields
    /// on a focus of `fhir_type` (children defined by `owner`), when they
    /// are known without evaluating it.
    pub fn result_type(&self, fhir_type: &'static str, owner: &'static str) -> Option<(&'static str, &'static str)> {
        let model = FhirModel::r4().ok()?;
        compiled::result_type(&self.ast, fhir_type, owner, model)
    }

    /// The source text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The syntax tree.
    pub fn ast(&self) -> &ast::Expr {
        &self.ast
    }

    /// Evaluates on `resource` (also `%resource`), with `%name` variables.
    pub fn evaluate<'a>(
        &self,
        resource: &'a JsonValue<'a>,
        variables: &HashMap<String, Collection<'a>>,
    ) -> Result<Collection<'a>, FhirPathError> {
        let model = FhirModel::r4().map_err(|e| FhirPathError::Model(e.to_string()))?;
        let root = [Value::resource(resource, model)];
        let mut out = Vec::new();
        self.evaluate_into(&root[0], &root, variables, &mut out)?;
        Ok(out)
    }

    /// Evaluates with `focus` as `$this` and `resource` as `%resource`.
    pub fn evaluate_on<'a>(
        &self,
        focus: Collection<'a>,
        resource: &[Value<'a>],
        variables: &HashMap<String, Collection<'a>>,
    ) -> Result<Collection<'a>, FhirPathError> {
        if let [item] = focus.as_slice() {
            let mut out = Vec::new();
            self.evaluate_into(item, resource, variables, &mut out)?;
            return Ok(out);
        }
        let model = FhirModel::r4().map_err(|e| FhirPathError::Model(e.to_string()))?;
        let evaluator = Evaluator {
            model,
            resource,
            variables,
        };
        evaluator
            .eval(&self.ast, &Scope::new(focus))
            .map_err(|e| self.in_expression(e))
    }

    /// Appends what the expression yields with the one item `focus` as
    /// `$this` (and `resource` as `%resource`) to `out`. For a node of the
    /// type the expression was compiled for, member chains are walked
    /// without building a collection per step (see `compiled`). On an error
    /// `out` may hold part of the result.
    pub fn evaluate_into<'a>(
        &self,
        focus: &Value<'a>,
        resource: &[Value<'a>],
        variables: &HashMap<String, Collection<'a>>,
        out: &mut Collection<'a>,
    ) -> Result<(), FhirPathError> {
        let model = FhirModel::r4().map_err(|e| FhirPathError::Model(e.to_string()))?;
        let evaluator = Evaluator {
            model,
            resource,
            variables,
        };
        if let Value::Node(node) = focus
            && let Some(compiled) = self.compiled_for(node, model)
        {
            let scope = Scope::new(if compiled.uses_scope {
                vec![focus.clone()]
            } else {
                Vec::new()
            });
            match compiled.path.evaluate_into(node, &evaluator, &scope, out) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(self.in_expression(e)),
            }
        }
        let result = evaluator
            .eval(&self.ast, &Scope::new(vec![focus.clone()]))
            .map_err(|e| self.in_expression(e))?;
        out.extend(result);
        Ok(())
    }

    /// The path compiled for `node`'s type, if the expression compiles and
    /// was first compiled for that type.
    fn compiled_for(&self, node: &Node<'_>, model: &'static FhirModel) -> Option<&CompiledFor> {
        if node.primitive_element.is_some() {
            return None;
        }
        let (fhir_type, owner) = node.fhir_type.zip(node.children_owner)?;
        self.compiled
            .get_or_init(|| {
                compiled::CompiledPath::compile(&self.ast, fhir_type, owner, model).map(|path| CompiledFor {
                    fhir_type,
                    owner,
                    uses_scope: path.uses_scope(),
                    path,
                })
            })
            .as_ref()
            .filter(|c| same_name(c.fhir_type, fhir_type) && same_name(c.owner, owner))
    }

    /// `e`, saying which expression it comes from.
    fn in_expression(&self, e: FhirPathError) -> FhirPathError {
        match e {
            FhirPathError::InExpression { .. } | FhirPathError::Syntax { .. } => e,
            other => FhirPathError::InExpression {
                expression: self.text.clone(),
                source: Box::new(other),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;

    fn eval(expr: &str, resource: &str) -> Vec<String> {
        let json = parse(resource).unwrap();
        let path = FhirPath::parse(expr).unwrap_or_else(|e| panic!("{e}"));
        let vars = HashMap::new();
        path.evaluate(&json, &vars)
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|v| v.to_fhirpath_string().unwrap_or_else(|| format!("<{}>", v.type_name())))
            .collect()
    }

    const OBS: &str = r#"{"resourceType":"Observation","id":"o1","status":"final",
        "code":{"coding":[{"system":"http://loinc.org","code":"4548-4"},{"system":"x","code":"y"}]},
        "subject":{"reference":"Patient/p1"},"valueQuantity":{"value":6.50,"unit":"%"},
        "component":[{"code":{"text":"a"},"valueString":"s"},{"code":{"text":"b"},"valueInteger":3}]}"#;

    #[test]
    fn navigates_choices_and_types() {
        assert_eq!(eval("value.value", OBS), ["6.50"]);
        assert_eq!(eval("Observation.value.ofType(Quantity).unit", OBS), ["%"]);
        assert_eq!(eval("(Observation.value as Quantity).value > 6", OBS), ["true"]);
        assert_eq!(eval("component.value.ofType(integer)", OBS), ["3"]);
        assert_eq!(eval("component.value.ofType(string)", OBS), ["s"]);
        assert_eq!(
            eval("code.coding.where(system = 'http://loinc.org').code", OBS),
            ["4548-4"]
        );
        assert_eq!(eval("subject.where(resolve() is Patient).exists()", OBS), ["true"]);
        assert_eq!(eval("subject.getReferenceKey(Patient)", OBS), ["p1"]);
        assert_eq!(eval("subject.getReferenceKey(Group)", OBS), Vec::<String>::new());
        assert_eq!(eval("getResourceKey()", OBS), ["o1"]);
        assert_eq!(eval("code.coding.code.join(',')", OBS), ["4548-4,y"]);
        assert_eq!(eval("component.count() + 1.0", OBS), ["3.0"]);
        assert_eq!(eval("status = 'final' and status != 'x'", OBS), ["true"]);
        assert_eq!(eval("{} = 1", OBS), Vec::<String>::new());
        assert_eq!(eval("code.coding[1].code", OBS), ["y"]);
        assert_eq!(eval("value.value.lowBoundary()", OBS), ["6.49500000"]);
    }

    #[test]
    fn random_expressions_never_panic() {
        // Deterministic xorshift over FHIRPath fragments, including overflow bait.
        let parts = [
            "code",
            ".coding",
            "[0]",
            "value",
            ".ofType(Quantity)",
            " + ",
            " - ",
            " * ",
            " / ",
            " div ",
            " mod ",
            "9223372036854775807",
            "-9223372036854775807",
            "1.5",
            "@2020",
            "@T10:00",
            " = ",
            " and ",
            "(",
            ")",
            ".first()",
            ".where(",
            "$this",
            "'a'",
            ".lowBoundary(",
            "30",
            ".substring(",
            ",",
            "99999999999999999999999.9",
            " | ",
            ".count()",
            ".select(",
            "%resource",
            ".iif(",
            "true",
            " 'mg'",
            " days",
            ".power(",
            ".abs()",
        ];
        let json = parse(OBS).unwrap();
        let vars = HashMap::new();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let mut expr = String::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            for _ in 0..(state % 8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                expr.push_str(parts[(state % parts.len() as u64) as usize]);
            }
            if let Ok(path) = FhirPath::parse(&expr) {
                let _ = path.evaluate(&json, &vars);
            }
        }
    }

    #[test]
    fn errors_name_expression_and_position() {
        let err = FhirPath::parse("name.frobnicate()").unwrap_err().to_string();
        assert!(
            err.contains("name.frobnicate()") && err.contains("'frobnicate'") && err.contains("position 5"),
            "{err}"
        );
        let json = parse(OBS).unwrap();
        let err = FhirPath::parse("code.coding.code.substring(0)")
            .unwrap()
            .evaluate(&json, &HashMap::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("code.coding.code.substring(0)") && err.contains("single item"),
            "{err}"
        );
    }
}
