//! The engine's SQL errors as Postgres errors: one SQLSTATE per error, in
//! one place (<https://www.postgresql.org/docs/current/errcodes-appendix.html>).

use datafusion::error::DataFusionError;
use fhirlake_engine::error::{ErrorKind, HasKind};
use fhirlake_engine::query::QueryError;
use fhirlake_engine::sql::SqlError;
use pgwire::error::{ErrorInfo, PgWireError};

/// The SQLSTATE of `error`.
pub fn sqlstate(error: &SqlError) -> &'static str {
    match error {
        SqlError::Syntax(_) => "42601",
        SqlError::ReadOnly(_) => "25006",
        SqlError::Denied(_) => "42501",
        SqlError::ServerSetting(_) => "55P02",
        SqlError::UnknownSetting(_) => "42704",
        SqlError::InvalidSetting { .. } => "22023",
        SqlError::Unsupported(_) => "0A000",
        SqlError::MemoryLimit { .. } => "53200",
        SqlError::Timeout(_) => "57014",
        SqlError::Query(QueryError::DataFusion(e)) => datafusion_state(e),
        SqlError::Query(e) => kind_state(e.kind()),
    }
}

/// Planning errors by what they say (DataFusion has no codes of its own).
fn datafusion_state(error: &DataFusionError) -> &'static str {
    let root = error.find_root();
    let text = root.to_string();
    match root {
        DataFusionError::SQL(..) => "42601",
        DataFusionError::Plan(_) | DataFusionError::SchemaError(..)
            if text.contains("table") && text.contains("not found") =>
        {
            "42P01"
        }
        DataFusionError::SchemaError(..) => "42703",
        DataFusionError::Plan(_) if text.contains("No function matches") || text.contains("Invalid function") => {
            "42883"
        }
        DataFusionError::Plan(_) => "42000",
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::ResourcesExhausted(_) => "53200",
        _ => kind_state(fhirlake_engine::warehouse::datafusion_kind(error)),
    }
}

fn kind_state(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Invalid | ErrorKind::Unprocessable => "42000",
        ErrorKind::NotFound => "42P01",
        ErrorKind::NotSupported => "0A000",
        ErrorKind::Forbidden => "42501",
        ErrorKind::TooMany => "53000",
        ErrorKind::Conflict | ErrorKind::PreconditionFailed => "40001",
        ErrorKind::Transient => "58000",
        ErrorKind::Internal => "XX000",
    }
}

/// `error` as the wire error the client receives.
pub(crate) fn to_wire(error: SqlError) -> PgWireError {
    let code = sqlstate(&error);
    let message = error.public_message();
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), message)))
}

/// A wire error with `code` and `message`.
pub(crate) fn wire_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), message.into())))
}
