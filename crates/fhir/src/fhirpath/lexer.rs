//! FHIRPath tokens.

use super::FhirPathError;

/// A token and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    /// What it is.
    pub kind: TokenKind,
    /// Byte offset in the expression.
    pub pos: usize,
}

/// Token kinds.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum TokenKind {
    Identifier(String),
    /// A `` `delimited` `` identifier (never a keyword).
    DelimitedIdentifier(String),
    String(String),
    Number(String),
    Date(String),
    DateTime(String),
    Time(String),
    External(String),
    This,
    Index,
    Total,
    Symbol(&'static str),
    Eof,
}

/// Splits `text` into tokens.
pub fn tokenize(text: &str) -> Result<Vec<Token>, FhirPathError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    let err = |pos: usize, message: String| FhirPathError::Syntax {
        expression: text.to_string(),
        pos,
        message,
    };
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        // Comments: `//` to end of line and `/* … */`.
        if c == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c == b'/' && bytes.get(i + 1) == Some(&b'*') {
            match text[i + 2..].find("*/") {
                Some(end) => i = i + 2 + end + 2,
                None => return Err(err(i, "unterminated comment".into())),
            }
            continue;
        }
        let kind = if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            TokenKind::Identifier(text[start..i].to_string())
        } else if c.is_ascii_digit() {
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if bytes.get(i) == Some(&b'.') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
            }
            TokenKind::Number(text[start..i].to_string())
        } else if c == b'\'' || c == b'`' {
            let (value, end) = read_quoted(text, i, c).map_err(|m| err(start, m))?;
            i = end;
            if c == b'\'' {
                TokenKind::String(value)
            } else {
                TokenKind::DelimitedIdentifier(value)
            }
        } else if c == b'@' {
            i += 1;
            let literal_start = i;
            if bytes.get(i) == Some(&b'T') {
                i += 1;
                i = scan_time(bytes, i);
                TokenKind::Time(text[literal_start + 1..i].to_string())
            } else {
                while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'-') {
                    i += 1;
                }
                if bytes.get(i) == Some(&b'T') {
                    i += 1;
                    i = scan_time(bytes, i);
                    if bytes.get(i) == Some(&b'Z') {
                        i += 1;
                    } else if matches!(bytes.get(i), Some(b'+' | b'-'))
                        && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)
                    {
                        i += 1;
                        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b':') {
                            i += 1;
                        }
                    }
                    TokenKind::DateTime(text[literal_start..i].to_string())
                } else {
                    TokenKind::Date(text[literal_start..i].to_string())
                }
            }
        } else if c == b'%' {
            i += 1;
            match bytes.get(i) {
                Some(&q @ (b'\'' | b'`')) => {
                    let (value, end) = read_quoted(text, i, q).map_err(|m| err(start, m))?;
                    i = end;
                    TokenKind::External(value)
                }
                Some(b) if b.is_ascii_alphabetic() || *b == b'_' => {
                    let name_start = i;
                    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'-')
                    {
                        i += 1;
                    }
                    TokenKind::External(text[name_start..i].to_string())
                }
                _ => return Err(err(start, "expected a name after '%'".into())),
            }
        } else if c == b'$' {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            match &text[start..i] {
                "$this" => TokenKind::This,
                "$index" => TokenKind::Index,
                "$total" => TokenKind::Total,
                other => return Err(err(start, format!("unknown special variable '{other}'"))),
            }
        } else {
            const SYMBOLS: [&str; 21] = [
                "<=", ">=", "!=", "!~", ".", "[", "]", "(", ")", "{", "}", ",", "+", "-", "*", "/", "&", "|", "<", ">",
                "=",
            ];
            let rest = &text[i..];
            if let Some(sym) = SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
                i += sym.len();
                TokenKind::Symbol(sym)
            } else if rest.starts_with('~') {
                i += 1;
                TokenKind::Symbol("~")
            } else {
                let ch = rest.chars().next().unwrap_or(' ');
                return Err(err(start, format!("unexpected character '{ch}'")));
            }
        };
        tokens.push(Token { kind, pos: start });
    }
    tokens.push(Token {
        kind: TokenKind::Eof,
        pos: text.len(),
    });
    Ok(tokens)
}

/// Scans the time part of a date/time literal (`hh[:mm[:ss[.fff]]]`); a `.`
/// not followed by a digit ends the literal (`@T10:30.precision()`).
fn scan_time(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() {
        match bytes[i] {
            b'0'..=b'9' | b':' => i += 1,
            b'.' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => i += 1,
            _ => break,
        }
    }
    i
}

/// Reads a quoted string or identifier starting at `start` (the quote),
/// resolving escapes; returns the value and the offset after the closing quote.
fn read_quoted(text: &str, start: usize, quote: u8) -> Result<(String, usize), String> {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut i = start + 1;
    while i < bytes.len() {
        let c = bytes[i];
        if c == quote {
            return Ok((out, i + 1));
        }
        if c == b'\\' {
            let Some(&e) = bytes.get(i + 1) else { break };
            i += 2;
            match e {
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'f' => out.push('\u{c}'),
                b'u' => {
                    let hex = text.get(i..i + 4).ok_or("truncated \\u escape")?;
                    let code = u32::from_str_radix(hex, 16).map_err(|_| "invalid \\u escape")?;
                    out.push(char::from_u32(code).ok_or("invalid \\u escape")?);
                    i += 4;
                }
                other => out.push(other as char),
            }
            continue;
        }
        let ch = text[i..].chars().next().ok_or("unterminated string")?;
        out.push(ch);
        i += ch.len_utf8();
    }
    Err(format!(
        "unterminated {}",
        if quote == b'\'' { "string" } else { "identifier" }
    ))
}
