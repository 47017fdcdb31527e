//! FHIR `instant` values as timestamps.

/// Microseconds since the epoch (UTC) of a FHIR `instant`
/// (`2024-05-01T10:00:00.123+02:00`); `None` if it is not one.
pub fn parse_instant(text: &str) -> Option<i64> {
    // FHIR instants always carry a zone; RFC 3339 is the same grammar.
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_micros())
}
