//! The `Prefer` request header (RFC 7240 as FHIR uses it): read once per
//! request into what the handlers act on.

use axum::http::HeaderMap;

/// How the client asked unknown or unsupported input to be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Handling {
    /// No preference: each interaction's documented default.
    #[default]
    Default,
    /// `handling=strict`: refuse what is not understood.
    Strict,
    /// `handling=lenient`: set it aside and say so.
    Lenient,
}

/// What a write returns as its body (`return=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Return {
    /// No preference or `return=representation`: the resource.
    #[default]
    Representation,
    /// `return=minimal`: no body.
    Minimal,
    /// `return=OperationOutcome`: what happened, as an OperationOutcome.
    OperationOutcome,
}

/// The preferences of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prefer {
    /// `respond-async`.
    pub respond_async: bool,
    /// `handling=`.
    pub handling: Handling,
    /// `return=`.
    pub body: Return,
    /// `separate-export-status` (Bulk Data 2.0 kick-off).
    pub separate_export_status: bool,
}

impl Prefer {
    /// Reads every `Prefer` header of `headers` (tokens are
    /// comma-separated, case-insensitive; unknown ones are ignored, as RFC
    /// 7240 asks).
    pub fn of(headers: &HeaderMap) -> Self {
        let mut prefer = Self::default();
        // `token[=value]` with optional `; parameter`s and a quoted value
        // (`handling="lenient"`, `respond-async; wait=10`).
        let tokens = headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| {
                let preference = p.split(';').next().unwrap_or_default();
                preference.to_ascii_lowercase().replace([' ', '\t', '"'], "")
            });
        for token in tokens {
            match token.as_str() {
                "respond-async" => prefer.respond_async = true,
                "handling=strict" => prefer.handling = Handling::Strict,
                "handling=lenient" => prefer.handling = Handling::Lenient,
                "return=minimal" => prefer.body = Return::Minimal,
                "return=representation" => prefer.body = Return::Representation,
                "return=operationoutcome" => prefer.body = Return::OperationOutcome,
                "separate-export-status" => prefer.separate_export_status = true,
                _ => {}
            }
        }
        prefer
    }

    /// Whether `handling=lenient` was asked for.
    pub fn lenient(&self) -> bool {
        self.handling == Handling::Lenient
    }

    /// Whether `handling=strict` was asked for.
    pub fn strict(&self) -> bool {
        self.handling == Handling::Strict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn reads_tokens_across_headers() {
        let mut headers = HeaderMap::new();
        headers.append("prefer", HeaderValue::from_static("respond-async, handling=lenient"));
        headers.append("prefer", HeaderValue::from_static("return=\"OperationOutcome\"; x=1"));
        let prefer = Prefer::of(&headers);
        assert!(prefer.respond_async);
        assert!(prefer.lenient());
        assert_eq!(prefer.body, Return::OperationOutcome);
        assert!(!Prefer::of(&HeaderMap::new()).respond_async);
    }
}
