//! A strict RFC 8259 JSON parser producing a borrowed [`JsonValue`].

use std::borrow::Cow;

use super::JsonValue;

/// Nesting deeper than this is rejected (guards the stack against hostile input;
/// real FHIR resources nest a few dozen levels at most).
const MAX_DEPTH: usize = 512;

/// Why a text is not valid JSON, and where (byte offset into the text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON at byte {offset}: {message}")]
pub struct JsonError {
    /// Byte offset of the problem in the parsed text.
    pub offset: usize,
    /// What is wrong.
    pub message: &'static str,
}

/// Parses one JSON text (surrounding whitespace allowed, nothing else after it).
pub fn parse(text: &str) -> Result<JsonValue<'_>, JsonError> {
    let mut p = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        depth: 0,
        // Room for a typical resource's open objects and arrays, so the
        // stacks rarely grow.
        members: Vec::with_capacity(64),
        items: Vec::with_capacity(32),
    };
    p.skip_ws();
    let value = p.value()?;
    p.skip_ws();
    if p.pos != p.bytes.len() {
        return Err(p.error("unexpected data after the JSON value"));
    }
    Ok(value)
}

/// Whether `bytes` holds a control character (< 0x20). A fold without an
/// early exit, so the compiler vectorises it; `position` would test byte by
/// byte, and string scanning is a tenth of a load's instructions.
#[inline]
fn has_control(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |seen, &b| seen | u8::from(b < 0x20)) != 0
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
    /// Members of the objects being parsed, innermost last. An object's
    /// members are gathered here and moved into one exactly sized vector
    /// when it closes: one allocation per object instead of a vector grown
    /// member by member (3–4 reallocations for a typical FHIR object).
    members: Vec<(Cow<'a, str>, JsonValue<'a>)>,
    /// The same for the items of the arrays being parsed.
    items: Vec<JsonValue<'a>>,
}

impl<'a> Parser<'a> {
    fn error(&self, message: &'static str) -> JsonError {
        JsonError {
            offset: self.pos,
            message,
        }
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(&b) = self.bytes.get(self.pos) {
            if matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn value(&mut self) -> Result<JsonValue<'a>, JsonError> {
        match self.peek() {
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => Ok(JsonValue::String(self.string()?)),
            Some(b't') => self.literal("true", JsonValue::Bool(true)),
            Some(b'f') => self.literal("false", JsonValue::Bool(false)),
            Some(b'n') => self.literal("null", JsonValue::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("expected a JSON value")),
            None => Err(self.error("unexpected end of input")),
        }
    }

    fn literal(&mut self, word: &'static str, value: JsonValue<'a>) -> Result<JsonValue<'a>, JsonError> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error("invalid literal"))
        }
    }

    fn enter(&mut self) -> Result<(), JsonError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error("nesting too deep"));
        }
        Ok(())
    }

    fn object(&mut self) -> Result<JsonValue<'a>, JsonError> {
        self.enter()?;
        self.pos += 1; // '{'
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(JsonValue::Object(Vec::new()));
        }
        let first = self.members.len();
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a string key"));
            }
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.error("expected ':' after an object key"));
            }
            self.pos += 1;
            self.skip_ws();
            let value = self.value()?;
            self.members.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(JsonValue::Object(self.members.drain(first..).collect()));
                }
                Some(_) => return Err(self.error("expected ',' or '}' in an object")),
                None => return Err(self.error("unexpected end of input in an object")),
            }
        }
    }

    fn array(&mut self) -> Result<JsonValue<'a>, JsonError> {
        self.enter()?;
        self.pos += 1; // '['
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(JsonValue::Array(Vec::new()));
        }
        let first = self.items.len();
        loop {
            self.skip_ws();
            let item = self.value()?;
            self.items.push(item);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(JsonValue::Array(self.items.drain(first..).collect()));
                }
                Some(_) => return Err(self.error("expected ',' or ']' in an array")),
                None => return Err(self.error("unexpected end of input in an array")),
            }
        }
    }

    /// Parses a string starting at the opening quote. Borrows when there are no
    /// escapes (the common case in FHIR data).
    fn string(&mut self) -> Result<Cow<'a, str>, JsonError> {
        self.pos += 1; // opening quote
        let start = self.pos;
        // Fast path: find the closing quote (or a backslash) with memchr, then
        // check the run for control characters in one vectorisable pass.
        match memchr::memchr2(b'"', b'\\', &self.bytes[start..]) {
            Some(offset) => {
                let end = start + offset;
                if has_control(&self.bytes[start..end]) {
                    let bad = self.bytes[start..end].iter().position(|b| *b < 0x20).unwrap_or(0);
                    self.pos = start + bad;
                    return Err(self.error("control character in a string"));
                }
                self.pos = end;
                if self.bytes[end] == b'"' {
                    self.pos += 1;
                    return Ok(Cow::Borrowed(&self.text[start..end]));
                }
            }
            None => {
                if let Some(bad) = self.bytes[start..].iter().position(|b| *b < 0x20) {
                    self.pos = start + bad;
                    return Err(self.error("control character in a string"));
                }
                self.pos = self.bytes.len();
                return Err(self.error("unterminated string"));
            }
        }
        // Slow path: the string has escapes.
        let mut out = String::with_capacity(self.pos - start + 16);
        out.push_str(&self.text[start..self.pos]);
        loop {
            let run_start = self.pos;
            loop {
                match self.bytes.get(self.pos) {
                    Some(b'"' | b'\\') => break,
                    Some(0x00..=0x1f) => return Err(self.error("control character in a string")),
                    Some(_) => self.pos += 1,
                    None => return Err(self.error("unterminated string")),
                }
            }
            out.push_str(&self.text[run_start..self.pos]);
            if self.bytes[self.pos] == b'"' {
                self.pos += 1;
                return Ok(Cow::Owned(out));
            }
            self.pos += 1; // backslash
            let Some(&esc) = self.bytes.get(self.pos) else {
                return Err(self.error("unterminated escape"));
            };
            self.pos += 1;
            match esc {
                b'"' => out.push('"'),
                b'\\' => out.push('\\'),
                b'/' => out.push('/'),
                b'b' => out.push('\u{8}'),
                b'f' => out.push('\u{c}'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'u' => {
                    let c = self.unicode_escape()?;
                    out.push(c);
                }
                _ => {
                    self.pos -= 1;
                    return Err(self.error("invalid escape"));
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let Some(digits) = self.bytes.get(self.pos..self.pos + 4) else {
            return Err(self.error("truncated \\u escape"));
        };
        let mut v = 0u32;
        for &d in digits {
            let n = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.error("invalid hex digit in \\u escape")),
            };
            v = v * 16 + u32::from(n);
        }
        self.pos += 4;
        Ok(v)
    }

    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let first = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&first) {
            if self.bytes.get(self.pos..self.pos + 2) != Some(b"\\u") {
                return Err(self.error("unpaired surrogate in \\u escape"));
            }
            self.pos += 2;
            let second = self.hex4()?;
            if !(0xDC00..0xE000).contains(&second) {
                return Err(self.error("invalid low surrogate in \\u escape"));
            }
            0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
        } else if (0xDC00..0xE000).contains(&first) {
            return Err(self.error("unpaired surrogate in \\u escape"));
        } else {
            first
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid \\u escape"))
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<JsonValue<'a>, JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.error("invalid number: no digits after '.'"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("invalid number: no digits in exponent"));
            }
        }
        Ok(JsonValue::Number(&self.text[start..self.pos]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_invalid_json() {
        for bad in [
            "",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "[1,]",
            "01",
            "1.",
            "-",
            "\"a",
            "tru",
            "{} x",
            "\"\\x\"",
            "\"\t\"",
            "\"\\ud800\"",
            "{a:1}",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn parses_escapes() {
        let v = parse(r#""a\u00e9\ud83d\ude00\/\n""#).unwrap();
        assert_eq!(v.as_str(), Some("aé😀/\n"));
    }

    #[test]
    fn reports_offset() {
        let err = parse(r#"{"a": [1, 2,, 3]}"#).unwrap_err();
        assert_eq!(err.offset, 12);
    }

    #[test]
    fn nested_members_keep_their_objects_and_order() {
        // Members of inner objects and arrays share the parser's stacks with
        // those of the outer ones still open.
        let v = parse(r#"{"a": {"b": [1, {"c": [], "d": [2, [3, 4]]}, 5], "e": {}}, "f": [[], [6]], "g": 7}"#).unwrap();
        let mut text = String::new();
        v.write_json(&mut text);
        assert_eq!(
            text,
            r#"{"a":{"b":[1,{"c":[],"d":[2,[3,4]]},5],"e":{}},"f":[[],[6]],"g":7}"#
        );
        let a = v.get("a").and_then(|a| a.as_object()).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(v.as_object().unwrap().len(), 3);
    }

    #[test]
    fn reports_the_offset_of_a_control_character_in_a_long_string() {
        let text = format!("{{\"k\": \"{}\u{1}x\"}}", "a".repeat(100));
        let err = parse(&text).unwrap_err();
        assert_eq!(err.message, "control character in a string");
        // `{"k": "` is 7 bytes, then 100 letters.
        assert_eq!(err.offset, 7 + 100);
    }

    #[test]
    fn limits_depth() {
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(parse(&deep).is_err());
        let ok = "[".repeat(100) + &"]".repeat(100);
        assert!(parse(&ok).is_ok());
    }
}
