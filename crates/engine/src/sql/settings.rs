//! Session settings a client driver sends and reads (`SET
//! extra_float_digits = 3`, `SHOW transaction isolation level`): kept per
//! session, never in DataFusion's configuration, which is the server's
//! (`SET datafusion.*` is refused).

use std::collections::BTreeMap;
use std::time::Duration;

use super::SqlError;

/// Settings clients may change, with their values at connect.
const SETTABLE: &[(&str, &str)] = &[
    ("application_name", ""),
    ("bytea_output", "hex"),
    ("client_encoding", "UTF8"),
    ("client_min_messages", "notice"),
    ("datestyle", "ISO, MDY"),
    ("default_transaction_isolation", "read committed"),
    ("extra_float_digits", "1"),
    ("intervalstyle", "postgres"),
    ("lc_messages", "C"),
    ("lc_monetary", "C"),
    ("lc_numeric", "C"),
    ("lc_time", "C"),
    ("search_path", "public, fhir"),
    ("statement_timeout", "0"),
    ("timezone", "UTC"),
    ("transaction_isolation", "read committed"),
    ("idle_in_transaction_session_timeout", "0"),
    ("lock_timeout", "0"),
    ("jit", "off"),
    ("geqo", "on"),
    ("join_collapse_limit", "8"),
    ("tcp_keepalives_idle", "0"),
];

/// Settings clients read but may not change.
const FIXED: &[(&str, &str)] = &[
    ("server_version", "16.0 (fhirlake)"),
    ("server_version_num", "160000"),
    ("server_encoding", "UTF8"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
    ("is_superuser", "off"),
    ("max_identifier_length", "63"),
    ("default_transaction_read_only", "on"),
    ("transaction_read_only", "on"),
    ("lc_collate", "C"),
    ("lc_ctype", "C"),
    ("max_connections", "100"),
    ("block_size", "8192"),
];

/// One session's settings.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    changed: BTreeMap<String, String>,
}

/// The canonical name of a setting (`TimeZone`, `transaction isolation
/// level` → `timezone`, `transaction_isolation`).
pub fn canonical_name(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    match name.as_str() {
        "transaction isolation level" => "transaction_isolation".into(),
        "time zone" => "timezone".into(),
        "session authorization" => "session_authorization".into(),
        _ => name.replace(' ', "_"),
    }
}

impl Settings {
    /// The value of `name`, if it is a setting clients may read.
    pub fn get(&self, name: &str) -> Option<String> {
        let name = canonical_name(name);
        if let Some(value) = self.changed.get(&name) {
            return Some(value.clone());
        }
        SETTABLE
            .iter()
            .chain(FIXED)
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    }

    /// Sets `name` to `value` (`None`: back to its default, as `RESET`).
    pub fn set(&mut self, name: &str, value: Option<String>) -> Result<String, SqlError> {
        let name = canonical_name(name);
        if name.starts_with("datafusion.") {
            return Err(SqlError::ServerSetting(name));
        }
        if FIXED.iter().any(|(n, _)| *n == name) {
            return Err(SqlError::ServerSetting(name));
        }
        if !SETTABLE.iter().any(|(n, _)| *n == name) {
            return Err(SqlError::UnknownSetting(name));
        }
        if name == "statement_timeout"
            && let Some(value) = &value
        {
            parse_timeout(value)?;
        }
        match value {
            Some(value) => self.changed.insert(name.clone(), value),
            None => self.changed.remove(&name),
        };
        Ok(name)
    }

    /// Every setting back to its default (`RESET ALL`, `DISCARD ALL`).
    pub fn reset_all(&mut self) {
        self.changed.clear();
    }

    /// The client's `statement_timeout` (`None`: 0, no limit of its own).
    pub fn statement_timeout(&self) -> Option<Duration> {
        let value = self.get("statement_timeout")?;
        parse_timeout(&value).ok().flatten()
    }

    /// The first schema of `search_path` (where unqualified names resolve).
    pub fn first_schema(&self) -> Option<String> {
        let path = self.get("search_path")?;
        let first = path.split(',').next()?.trim().trim_matches('"');
        (!first.is_empty() && first != "\"$user\"" && first != "$user").then(|| first.to_string())
    }
}

/// A Postgres duration setting: a number of milliseconds, or a number with
/// a unit (`5s`, `250ms`, `2min`). `Ok(None)`: 0, no limit.
fn parse_timeout(value: &str) -> Result<Option<Duration>, SqlError> {
    let text = value.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let invalid = || SqlError::InvalidSetting {
        name: "statement_timeout".into(),
        value: value.to_string(),
    };
    let number: f64 = number.parse().map_err(|_| invalid())?;
    let millis = match unit.trim() {
        "" | "ms" => number,
        "s" => number * 1e3,
        "min" => number * 60e3,
        "h" => number * 3600e3,
        _ => return Err(invalid()),
    };
    Ok((millis > 0.0).then(|| Duration::from_secs_f64(millis / 1e3)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_settings_are_kept_and_server_settings_refused() {
        let mut settings = Settings::default();
        settings.set("extra_float_digits", Some("3".into())).unwrap();
        assert_eq!(settings.get("EXTRA_FLOAT_DIGITS").as_deref(), Some("3"));
        assert_eq!(
            settings.get("transaction isolation level").as_deref(),
            Some("read committed")
        );
        assert!(matches!(
            settings.set("datafusion.execution.batch_size", Some("1".into())),
            Err(SqlError::ServerSetting(_))
        ));
        assert!(matches!(
            settings.set("server_version", Some("1".into())),
            Err(SqlError::ServerSetting(_))
        ));
        assert!(matches!(
            settings.set("no_such_thing", Some("1".into())),
            Err(SqlError::UnknownSetting(_))
        ));
        settings.set("statement_timeout", Some("1500".into())).unwrap();
        assert_eq!(settings.statement_timeout(), Some(Duration::from_millis(1500)));
        settings.set("statement_timeout", Some("2s".into())).unwrap();
        assert_eq!(settings.statement_timeout(), Some(Duration::from_secs(2)));
        assert!(settings.set("statement_timeout", Some("soon".into())).is_err());
        settings.set("search_path", Some("fhir, public".into())).unwrap();
        assert_eq!(settings.first_schema().as_deref(), Some("fhir"));
        settings.reset_all();
        assert_eq!(settings.statement_timeout(), None);
    }
}
