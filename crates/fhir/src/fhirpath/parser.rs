//! A Pratt parser for FHIRPath (N1 grammar, with FHIRPath's precedence table).

use super::FhirPathError;
use super::ast::{BinaryOp, Expr, Literal, TypeSpecifier};
use super::lexer::{Token, TokenKind, tokenize};

/// Calendar duration words usable as quantity units (`3 days`).
const CALENDAR_UNITS: [&str; 16] = [
    "year",
    "years",
    "month",
    "months",
    "week",
    "weeks",
    "day",
    "days",
    "hour",
    "hours",
    "minute",
    "minutes",
    "second",
    "seconds",
    "millisecond",
    "milliseconds",
];

/// Parses a FHIRPath expression.
pub fn parse(text: &str) -> Result<Expr, FhirPathError> {
    let tokens = tokenize(text)?;
    let mut parser = Parser { text, tokens, pos: 0 };
    let expr = parser.expression(0)?;
    let token = parser.peek();
    if token.kind != TokenKind::Eof {
        return Err(parser.error(token.pos, "unexpected input after the end of the expression"));
    }
    Ok(expr)
}

struct Parser<'t> {
    text: &'t str,
    tokens: Vec<Token>,
    pos: usize,
}

fn binary_op(token: &TokenKind) -> Option<(BinaryOp, u8)> {
    use BinaryOp::*;
    let op = match token {
        TokenKind::Symbol(s) => match *s {
            "*" => (Mul, 10),
            "/" => (Div, 10),
            "+" => (Add, 9),
            "-" => (Sub, 9),
            "&" => (Concat, 9),
            "|" => (Union, 7),
            "<" => (Lt, 6),
            ">" => (Gt, 6),
            "<=" => (Le, 6),
            ">=" => (Ge, 6),
            "=" => (Eq, 5),
            "~" => (Equivalent, 5),
            "!=" => (NotEq, 5),
            "!~" => (NotEquivalent, 5),
            _ => return None,
        },
        TokenKind::Identifier(word) => match word.as_str() {
            "div" => (IntDiv, 10),
            "mod" => (Mod, 10),
            "in" => (In, 4),
            "contains" => (Contains, 4),
            "and" => (And, 3),
            "or" => (Or, 2),
            "xor" => (Xor, 2),
            "implies" => (Implies, 1),
            _ => return None,
        },
        _ => return None,
    };
    Some(op)
}

/// Binding power of `is` / `as`.
const TYPE_OP_POWER: u8 = 8;
/// Binding power of unary `+` / `-`.
const UNARY_POWER: u8 = 11;

impl Parser<'_> {
    fn error(&self, pos: usize, message: impl Into<String>) -> FhirPathError {
        FhirPathError::Syntax {
            expression: self.text.to_string(),
            pos,
            message: message.into(),
        }
    }

    fn peek(&self) -> &Token {
        &self.tokens[self.pos.min(self.tokens.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let token = self.peek().clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        token
    }

    fn is_symbol(&self, symbol: &str) -> bool {
        matches!(&self.peek().kind, TokenKind::Symbol(s) if *s == symbol)
    }

    fn expect_symbol(&mut self, symbol: &str) -> Result<(), FhirPathError> {
        if self.is_symbol(symbol) {
            self.next();
            Ok(())
        } else {
            let pos = self.peek().pos;
            Err(self.error(pos, format!("expected '{symbol}'")))
        }
    }

    fn expression(&mut self, min_power: u8) -> Result<Expr, FhirPathError> {
        let mut left = self.prefix()?;
        loop {
            let token = self.peek().clone();
            // Postfix: member access / function call / indexer bind tightest.
            if let TokenKind::Symbol(".") = token.kind {
                self.next();
                left = self.invocation(Some(left))?;
                continue;
            }
            if let TokenKind::Symbol("[") = token.kind {
                self.next();
                let index = self.expression(0)?;
                self.expect_symbol("]")?;
                left = Expr::Indexer(Box::new(left), Box::new(index));
                continue;
            }
            if let TokenKind::Identifier(word) = &token.kind
                && (word == "is" || word == "as")
            {
                if TYPE_OP_POWER <= min_power {
                    break;
                }
                self.next();
                let type_spec = self.type_specifier()?;
                left = if word == "is" {
                    Expr::Is(Box::new(left), type_spec)
                } else {
                    Expr::As(Box::new(left), type_spec)
                };
                continue;
            }
            let Some((op, power)) = binary_op(&token.kind) else {
                break;
            };
            if power <= min_power {
                break;
            }
            self.next();
            let right = self.expression(power)?;
            left = Expr::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn type_specifier(&mut self) -> Result<TypeSpecifier, FhirPathError> {
        let token = self.next();
        let first = match token.kind {
            TokenKind::Identifier(name) | TokenKind::DelimitedIdentifier(name) => name,
            _ => return Err(self.error(token.pos, "expected a type name")),
        };
        if self.is_symbol(".") {
            self.next();
            let token = self.next();
            return match token.kind {
                TokenKind::Identifier(name) | TokenKind::DelimitedIdentifier(name) => Ok(TypeSpecifier {
                    namespace: Some(first),
                    name,
                }),
                _ => Err(self.error(token.pos, "expected a type name after the namespace")),
            };
        }
        Ok(TypeSpecifier {
            namespace: None,
            name: first,
        })
    }

    fn prefix(&mut self) -> Result<Expr, FhirPathError> {
        let token = self.peek().clone();
        match token.kind {
            TokenKind::Symbol("-") => {
                self.next();
                let operand = self.expression(UNARY_POWER)?;
                Ok(match operand {
                    Expr::Literal(Literal::Integer(n)) => Expr::Literal(Literal::Integer(-n)),
                    Expr::Literal(Literal::Decimal(d)) => Expr::Literal(Literal::Decimal(format!("-{d}"))),
                    other => Expr::Negate(Box::new(other)),
                })
            }
            TokenKind::Symbol("+") => {
                self.next();
                self.expression(UNARY_POWER)
            }
            TokenKind::Symbol("(") => {
                self.next();
                let inner = self.expression(0)?;
                self.expect_symbol(")")?;
                Ok(inner)
            }
            TokenKind::Symbol("{") => {
                self.next();
                self.expect_symbol("}")?;
                Ok(Expr::Literal(Literal::Empty))
            }
            TokenKind::String(s) => {
                self.next();
                Ok(Expr::Literal(Literal::String(s)))
            }
            TokenKind::Number(n) => {
                self.next();
                self.number(n, token.pos)
            }
            TokenKind::Date(d) => {
                self.next();
                Ok(Expr::Literal(Literal::Date(d)))
            }
            TokenKind::DateTime(d) => {
                self.next();
                Ok(Expr::Literal(Literal::DateTime(d)))
            }
            TokenKind::Time(t) => {
                self.next();
                Ok(Expr::Literal(Literal::Time(t)))
            }
            TokenKind::External(name) => {
                self.next();
                Ok(Expr::External(name))
            }
            TokenKind::Identifier(ref word) if word == "true" || word == "false" => {
                self.next();
                Ok(Expr::Literal(Literal::Boolean(word == "true")))
            }
            TokenKind::Identifier(_)
            | TokenKind::DelimitedIdentifier(_)
            | TokenKind::This
            | TokenKind::Index
            | TokenKind::Total => self.invocation(None),
            TokenKind::Eof => Err(self.error(token.pos, "unexpected end of expression")),
            _ => Err(self.error(token.pos, "expected an expression")),
        }
    }

    fn number(&mut self, text: String, pos: usize) -> Result<Expr, FhirPathError> {
        // A number followed by a unit is a quantity literal.
        let unit = match &self.peek().kind {
            TokenKind::String(unit) => Some(unit.clone()),
            TokenKind::Identifier(word) if CALENDAR_UNITS.contains(&word.as_str()) => Some(word.clone()),
            _ => None,
        };
        if let Some(unit) = unit {
            self.next();
            return Ok(Expr::Literal(Literal::Quantity { value: text, unit }));
        }
        if text.contains('.') {
            Ok(Expr::Literal(Literal::Decimal(text)))
        } else {
            match text.parse::<i64>() {
                Ok(n) => Ok(Expr::Literal(Literal::Integer(n))),
                Err(_) => Err(self.error(pos, "integer literal out of range")),
            }
        }
    }

    fn invocation(&mut self, target: Option<Expr>) -> Result<Expr, FhirPathError> {
        let token = self.next();
        let name = match token.kind {
            TokenKind::Identifier(name) | TokenKind::DelimitedIdentifier(name) => name,
            TokenKind::This if target.is_none() => return Ok(Expr::This),
            TokenKind::Index if target.is_none() => return Ok(Expr::Index),
            TokenKind::Total if target.is_none() => return Ok(Expr::Total),
            _ => return Err(self.error(token.pos, "expected a name")),
        };
        if self.is_symbol("(") {
            self.next();
            let mut args = Vec::new();
            if !self.is_symbol(")") {
                loop {
                    args.push(self.expression(0)?);
                    if self.is_symbol(",") {
                        self.next();
                    } else {
                        break;
                    }
                }
            }
            self.expect_symbol(")")?;
            return Ok(Expr::Function {
                target: target.map(Box::new),
                name,
                args,
                pos: token.pos,
            });
        }
        Ok(match target {
            Some(t) => Expr::Member(Box::new(t), name),
            None => Expr::Identifier(name),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Expr {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_paths_functions_and_precedence() {
        assert_eq!(
            p("name.given"),
            Expr::Member(Box::new(Expr::Identifier("name".into())), "given".into())
        );
        let e = p("a = 1 and b > 2 or c");
        let Expr::Binary(BinaryOp::Or, left, _) = e else {
            panic!()
        };
        assert!(matches!(*left, Expr::Binary(BinaryOp::And, _, _)));
        let e = p("1 + 2 * 3");
        let Expr::Binary(BinaryOp::Add, _, right) = e else {
            panic!()
        };
        assert!(matches!(*right, Expr::Binary(BinaryOp::Mul, _, _)));
        assert!(matches!(
            p("value as Quantity | x"),
            Expr::Binary(BinaryOp::Union, _, _)
        ));
        assert!(matches!(
            p("Observation.subject.where(resolve() is Patient)"),
            Expr::Function { .. }
        ));
        assert_eq!(p("-5"), Expr::Literal(Literal::Integer(-5)));
        assert_eq!(
            p("4.0 'mg'"),
            Expr::Literal(Literal::Quantity {
                value: "4.0".into(),
                unit: "mg".into()
            })
        );
        assert!(matches!(p("name[%idx].given"), Expr::Member(..)));
        assert!(matches!(
            p("@2020-01-01T10:00:00+02:00"),
            Expr::Literal(Literal::DateTime(_))
        ));
        assert!(matches!(p("`div`.x"), Expr::Member(..)));
    }

    #[test]
    fn reports_syntax_errors_with_position() {
        let err = parse("name.where(").unwrap_err().to_string();
        assert!(err.contains("name.where(") && err.contains("position 11"), "{err}");
        assert!(parse("a b").is_err());
        assert!(parse("'abc").is_err());
    }
}
