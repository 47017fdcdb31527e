//! FHIRPath functions: one table per family of functions (a file each), one
//! entry per function (name, arity, implementation). Arguments arrive unevaluated, so functions that take a
//! criterion (`where`, `select`, `all`, …) evaluate it per input item.

mod conversions;
mod existence;
mod fhir;
mod filtering;
mod math;
mod strings;
mod utility;

pub(crate) use self::fhir::{
    reference_key, reference_key_of_type, reference_key_str, reference_target, resource_key, resource_key_str,
};
use self::{math::*, strings::*};

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

/// Every supported function, by family.
static FAMILIES: [&[Function]; 7] = [
    existence::FUNCTIONS,
    filtering::FUNCTIONS,
    utility::FUNCTIONS,
    conversions::FUNCTIONS,
    strings::FUNCTIONS,
    math::FUNCTIONS,
    fhir::FUNCTIONS,
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

/// The function called `name`: a hash lookup, since a linear scan of
/// the function tables by name ran on every call of every evaluation.
fn lookup(name: &str) -> Option<&'static Function> {
    static BY_NAME: std::sync::OnceLock<crate::fhir::model::FastMap<&'static str, &'static Function>> =
        std::sync::OnceLock::new();
    BY_NAME
        .get_or_init(|| {
            FAMILIES
                .iter()
                .flat_map(|family| family.iter())
                .map(|f| (f.name, f))
                .collect()
        })
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
