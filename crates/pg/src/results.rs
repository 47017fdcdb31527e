//! Results on the wire: the engine's Arrow batches encoded as Postgres
//! rows (text or binary, per column, as the client asks) by arrow-pg, and
//! the parameters of prepared statements decoded into DataFusion values.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::channel::oneshot;

use arrow_pg::datatypes::df::deserialize_parameters_with_server_types;
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ParamValues;
use fhirlake_engine::sql::{PlannedQuery, ResultStream, SqlError};
use futures::{StreamExt, stream};
use pgwire::api::Type;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::results::{DataRowEncoder, FieldInfo, QueryResponse};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::types::format::FormatOptions;

use crate::connection::PgStatement;
use crate::errors::{to_wire, wire_error};

/// The rows of `results`, streamed as the client reads them.
pub(crate) fn query_response(
    results: ResultStream,
    format: &Format,
    options: Arc<FormatOptions>,
    cancel: Option<oneshot::Receiver<()>>,
) -> Result<QueryResponse, SqlError> {
    let schema = results.schema();
    let fields = arrow_schema_to_pg_fields(&schema, format, Some(options))
        .map_err(|e| SqlError::Unsupported(format!("a result column's type on the Postgres wire ({e})")))?;
    let fields = Arc::new(fields);
    let encoder_fields = fields.clone();
    let rows = results
        .map(
            move |batch| -> Box<dyn Iterator<Item = PgWireResult<DataRow>> + Send + Sync> {
                match batch {
                    Ok(batch) => encode_recordbatch(encoder_fields.clone(), batch),
                    Err(e) => Box::new(std::iter::once(Err(to_wire(e)))),
                }
            },
        )
        .flat_map(stream::iter);
    Ok(QueryResponse::new(fields, cancellable(rows, cancel)))
}

/// `rows`, ended by a cancel request (`pg_cancel_backend`, psql's Ctrl-C,
/// psycopg's `cancel()`) with Postgres' "canceling statement" error;
/// ending the stream drops the query's `ResultStream`, which stops it.
fn cancellable(
    rows: impl futures::Stream<Item = PgWireResult<DataRow>> + Send + 'static,
    cancel: Option<oneshot::Receiver<()>>,
) -> impl futures::Stream<Item = PgWireResult<DataRow>> + Send + 'static {
    let cancelled = Arc::new(AtomicBool::new(false));
    let flag = cancelled.clone();
    let until = async move {
        let fired = match cancel {
            Some(receiver) => receiver.await.is_ok(),
            None => false,
        };
        // A dropped sender (the next query replaced it) is no cancel.
        if !fired {
            futures::future::pending::<()>().await;
        }
        flag.store(true, Ordering::SeqCst);
    };
    let error = stream::once(async move {
        cancelled
            .load(Ordering::SeqCst)
            .then(|| Err(wire_error("57014", "canceling statement due to user request")))
    })
    .filter_map(futures::future::ready);
    rows.take_until(until).chain(error)
}

/// The one column of `SHOW name`.
pub(crate) fn show_fields(name: &str, format: &Format) -> Vec<FieldInfo> {
    vec![FieldInfo::new(
        name.to_string(),
        None,
        None,
        Type::TEXT,
        format.format_for(0),
    )]
}

/// `SHOW name`'s one row.
pub(crate) fn show_response(name: &str, value: &str, format: &Format) -> Result<QueryResponse, SqlError> {
    let fields = Arc::new(show_fields(name, format));
    let mut encoder = DataRowEncoder::new(fields.clone());
    let row = encoder
        .encode_field(&Some(value))
        .map(|()| encoder.take_row())
        .map_err(|e| SqlError::Unsupported(e.to_string()))?;
    Ok(QueryResponse::new(fields, stream::iter([Ok(row)])))
}

/// The placeholders of `query` in order (`$1`, `$2`, …), with the
/// Postgres types DataFusion inferred (`unknown` where it could not).
pub(crate) fn parameter_types(query: &PlannedQuery) -> PgWireResult<Vec<(Option<DataType>, Type)>> {
    let inferred = query
        .plan()
        .get_parameter_types()
        .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    let mut numbered: Vec<(usize, Option<DataType>)> = inferred
        .into_iter()
        .filter_map(|(name, data_type)| Some((name.strip_prefix('$')?.parse().ok()?, data_type)))
        .collect();
    numbered.sort_by_key(|(n, _)| *n);
    numbered
        .into_iter()
        .map(|(_, data_type)| {
            let pg_type = match &data_type {
                Some(data_type) => into_pg_type(data_type)?,
                None => Type::UNKNOWN,
            };
            Ok((data_type, pg_type))
        })
        .collect()
}

/// The values bound to `portal`'s parameters.
pub(crate) fn parameter_values(query: &PlannedQuery, portal: &Portal<PgStatement>) -> PgWireResult<ParamValues> {
    let types = parameter_types(query)?;
    let inferred: Vec<Option<&DataType>> = types.iter().map(|(d, _)| d.as_ref()).collect();
    let server: Vec<Option<&Type>> = types.iter().map(|(_, t)| Some(t)).collect();
    deserialize_parameters_with_server_types(portal, &inferred, &server)
}
