//! Rewrites of client SQL that DataFusion would refuse, applied after the
//! Postgres compatibility parser's own: `LIKE … ESCAPE 'x'` with an escape
//! character other than backslash (SQLAlchemy's `startswith` sends
//! `ESCAPE '/'`), which DataFusion does not run.

use std::ops::ControlFlow;

use datafusion::arrow::array::StringArray;
use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::sql::sqlparser::ast::{Expr, Statement, Value, visit_expressions_mut};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use std::sync::Arc;

/// The function a rewritten pattern goes through.
const LIKE_ESCAPE: &str = "fhirlake_like_escape";

/// Rewrites `statement` in place.
pub(crate) fn rewrite(statement: &mut Statement) {
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::Like {
            pattern, escape_char, ..
        }
        | Expr::ILike {
            pattern, escape_char, ..
        } = expr
            && let Some(escape) = escape_char.as_ref().and_then(|v| match &v.value {
                Value::SingleQuotedString(s) => Some(s.clone()),
                _ => None,
            })
            && escape != "\\"
            && let Some(converted) = converted_pattern(pattern, &escape)
        {
            **pattern = converted;
            *escape_char = None;
        }
        ControlFlow::<()>::Continue(())
    });
}

/// `fhirlake_like_escape(pattern, 'x')`.
fn converted_pattern(pattern: &Expr, escape: &str) -> Option<Expr> {
    let text = format!("{LIKE_ESCAPE}({pattern}, '{}')", escape.replace('\'', "''"));
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&text)
        .ok()?
        .parse_expr()
        .ok()
}

/// `fhirlake_like_escape(pattern, escape)`: `pattern` (whose escape
/// character is `escape`) with backslash as its escape character instead.
pub(crate) fn like_escape_function() -> ScalarUDF {
    create_udf(
        LIKE_ESCAPE,
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let patterns = datafusion::common::cast::as_string_array(&arrays[0])?;
            let escapes = datafusion::common::cast::as_string_array(&arrays[1])?;
            let converted: StringArray = patterns
                .iter()
                .zip(escapes.iter())
                .map(|(pattern, escape)| Some(to_backslash_escape(pattern?, escape?.chars().next()?)))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(converted)))
        }),
    )
}

fn to_backslash_escape(pattern: &str, escape: char) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == escape {
            match chars.next() {
                Some('\\') => out.push_str("\\\\"),
                Some(next) => {
                    out.push('\\');
                    out.push(next);
                }
                None => {}
            }
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_move_to_backslash_escapes() {
        assert_eq!(to_backslash_escape("pg/_%", '/'), "pg\\_%");
        assert_eq!(to_backslash_escape("a\\b//c", '/'), "a\\\\b\\/c");
        let mut statements = datafusion_pg_catalog::sql::PostgresCompatibilityParser::new()
            .parse("SELECT 1 WHERE 'x' LIKE $1 || '%' ESCAPE '/'")
            .unwrap();
        rewrite(&mut statements[0]);
        let text = statements[0].to_string();
        assert!(text.contains("fhirlake_like_escape($1 || '%', '/')"), "{text}");
        assert!(!text.contains("ESCAPE"), "{text}");
    }
}
