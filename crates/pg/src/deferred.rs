//! Statements that can only be planned once their parameters are known:
//! `cohort($1)` is expanded into the cohort compiler's plan while the
//! query is planned, so its filter must be a value, not a placeholder.
//! Such a statement is kept as parsed at Parse and planned at Bind/Execute
//! with the bound values put into the syntax tree as literal nodes (never
//! spliced into SQL text: a value cannot change the statement's shape).

use std::ops::ControlFlow;

use datafusion::common::{ParamValues, ScalarValue};
use datafusion::sql::sqlparser::ast::{Expr, Statement, Value, visit_expressions, visit_expressions_mut};
use pgwire::api::portal::Portal;
use pgwire::error::PgWireResult;

use crate::connection::PgStatement;
use crate::errors::wire_error;

/// The number of distinct `$n` placeholders of `statement` (the highest n).
pub(crate) fn placeholder_count(statement: &Statement) -> usize {
    let mut highest = 0;
    let _ = visit_expressions(statement, |expr| {
        if let Expr::Value(value) = expr
            && let Value::Placeholder(name) = &value.value
            && let Some(n) = name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok())
        {
            highest = highest.max(n);
        }
        ControlFlow::<()>::Continue(())
    });
    highest
}

/// `statement` with the values bound to `portal` in place of `$1`, `$2`, ….
pub(crate) fn bind(statement: &Statement, portal: &Portal<PgStatement>) -> PgWireResult<Statement> {
    let count = placeholder_count(statement);
    // No server-side types: each value decodes by the type the client gave.
    let values = arrow_pg::datatypes::df::deserialize_parameters(portal, &vec![None; count])?;
    let ParamValues::List(values) = values else {
        return Err(wire_error("08P01", "parameters must be positional ($1, $2, …)"));
    };
    let literals: Vec<Expr> = values.iter().map(|v| literal(&v.value)).collect::<PgWireResult<_>>()?;
    let mut bound = statement.clone();
    let _ = visit_expressions_mut(&mut bound, |expr| {
        if let Expr::Value(value) = expr
            && let Value::Placeholder(name) = &value.value
            && let Some(literal) = name
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .and_then(|n| literals.get(n.wrapping_sub(1)))
        {
            *expr = literal.clone();
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(bound)
}

/// A value as a literal node of the syntax tree.
fn literal(value: &ScalarValue) -> PgWireResult<Expr> {
    if value.is_null() {
        return Ok(Expr::value(Value::Null));
    }
    let node = match value {
        ScalarValue::Boolean(Some(b)) => Value::Boolean(*b),
        v if v.data_type().is_numeric() => Value::Number(v.to_string(), false),
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
            Value::SingleQuotedString(s.clone())
        }
        other => Value::SingleQuotedString(other.to_string()),
    };
    Ok(Expr::value(node))
}
