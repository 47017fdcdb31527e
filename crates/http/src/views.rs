//! SQL-on-FHIR 2.1 `$viewdefinition-run` (system level, as R4 servers
//! must offer it): a ViewDefinition given inline (`viewResource`) run
//! synchronously over the resources given inline (`resource`) or, without
//! them, over the warehouse's resources of the view's type, streamed as
//! `_format` json, ndjson, csv (`header`) or parquet, at most `_limit`
//! rows. Inline runs answer JSON from the runner's typed values (every
//! column, nulls explicit); warehouse runs stream Arrow batches (decimals
//! as numbers; null cells omitted, as Arrow's JSON writer does). Stored views (`viewReference`), `patient`, `group` and `_since`
//! are refused as not supported (400), never ignored.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fhirlake_auth::Permission;
use fhirlake_engine::json;
use fhirlake_engine::query::{OutputFormat, StreamingWriter, decimals_as_numbers};
use fhirlake_engine::view::materialize::run_view;
use fhirlake_engine::view::{Cell, CellValue, Row, ViewDefinition, ViewRunner, rows_to_batch, view_schema};
use serde_json::Value;

use super::SharedState;
use super::auth::Caller;
use super::outcome::FhirError;

/// What a run was asked for.
struct RunRequest {
    view: Value,
    resources: Vec<Value>,
    format: OutputFormat,
    header: bool,
    limit: Option<usize>,
}

/// `POST /$viewdefinition-run` and `POST /ViewDefinition/$viewdefinition-run`.
pub async fn run(
    State(state): State<SharedState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<Vec<(String, String)>>,
    body: Bytes,
) -> Result<Response, FhirError> {
    let request = parse_request(&body, &params)?;
    let definition =
        ViewDefinition::from_json(&request.view).map_err(|e| unprocessable(format!("viewResource: {e}")))?;
    caller.require(&definition.resource, Permission::Read)?;
    let runner = ViewRunner::new(&definition).map_err(|e| unprocessable(format!("viewResource: {e}")))?;
    let content_type = content_type(request.format);
    if !request.resources.is_empty() {
        let bytes = run_inline(&runner, &request)?;
        return Ok(typed(Body::from(bytes), content_type));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    let warehouse = state.service.warehouse.clone();
    let view = request.view.clone();
    let writer_view = definition.clone();
    let (format, header, limit) = (request.format, request.header, request.limit);
    tokio::spawn(async move {
        let error_tx = tx.clone();
        // Creating a Parquet writer already writes (its magic bytes).
        let created = tokio::task::spawn_blocking(move || {
            let out = std::io::BufWriter::with_capacity(64 * 1024, ChannelWriter(tx));
            new_writer(format, header, &writer_view, out)
        })
        .await;
        let writer = match created {
            Ok(Ok(writer)) => Arc::new(Mutex::new(Some(writer))),
            Ok(Err(e)) => {
                let _ = error_tx.send(Err(std::io::Error::other(e))).await;
                return;
            }
            Err(e) => {
                let _ = error_tx.send(Err(std::io::Error::other(e.to_string()))).await;
                return;
            }
        };
        if let Err(e) = stream_view(&warehouse, &view, format, writer, limit).await {
            tracing::warn!(error = %e, "$viewdefinition-run stopped");
            let _ = error_tx.send(Err(std::io::Error::other(e))).await;
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|chunk| (chunk, rx)) });
    Ok(typed(Body::from_stream(stream), content_type))
}

/// The Parameters body (and the query's `_format`), checked.
fn parse_request(body: &[u8], params: &[(String, String)]) -> Result<RunRequest, FhirError> {
    let parameters: Value =
        serde_json::from_slice(body).map_err(|e| FhirError::invalid(format!("the body is not JSON: {e}")))?;
    if parameters["resourceType"] != "Parameters" {
        return Err(FhirError::invalid("$viewdefinition-run takes a Parameters resource"));
    }
    let mut request = RunRequest {
        view: Value::Null,
        resources: Vec::new(),
        format: OutputFormat::Json,
        header: true,
        limit: None,
    };
    let mut format = params.iter().find(|(k, _)| k == "_format").map(|(_, v)| v.clone());
    for parameter in parameters["parameter"].as_array().into_iter().flatten() {
        let value = |name: &str| parameter.get(name).cloned().unwrap_or(Value::Null);
        match parameter["name"].as_str().unwrap_or_default() {
            "viewResource" => request.view = value("resource"),
            "resource" => request.resources.push(value("resource")),
            "_format" => {
                format = value("valueCode")
                    .as_str()
                    .or(value("valueString").as_str())
                    .map(str::to_string)
            }
            "header" => request.header = value("valueBoolean").as_bool().unwrap_or(true),
            "_limit" => {
                let limit = value("valueInteger").as_u64().filter(|n| *n > 0);
                request.limit =
                    Some(limit.ok_or_else(|| FhirError::invalid("_limit must be a positive valueInteger"))? as usize);
            }
            name @ ("viewReference" | "patient" | "group" | "_since" | "source") => {
                return Err(FhirError::new(
                    StatusCode::BAD_REQUEST,
                    "not-supported",
                    format!(
                        "$viewdefinition-run: parameter '{name}' is not supported yet (give the view inline as viewResource)"
                    ),
                ));
            }
            other => {
                return Err(FhirError::invalid(format!(
                    "$viewdefinition-run has no parameter '{other}'"
                )));
            }
        }
    }
    if request.view.is_null() {
        return Err(FhirError::invalid(
            "$viewdefinition-run needs viewResource (the ViewDefinition)",
        ));
    }
    request.format = match format.as_deref().map(|f| f.split(';').next().unwrap_or(f).trim()) {
        None | Some("json" | "application/json") => OutputFormat::Json,
        Some("ndjson" | "application/x-ndjson" | "application/ndjson") => OutputFormat::Ndjson,
        Some("csv" | "text/csv") => OutputFormat::Csv,
        Some("parquet" | "application/vnd.apache.parquet") => OutputFormat::Parquet,
        Some(other) => {
            return Err(FhirError::invalid(format!(
                "_format '{other}': use json, ndjson, csv or parquet"
            )));
        }
    };
    Ok(request)
}

fn unprocessable(text: String) -> FhirError {
    FhirError::new(StatusCode::UNPROCESSABLE_ENTITY, "processing", text)
}

fn content_type(format: OutputFormat) -> &'static str {
    match format {
        OutputFormat::Ndjson => "application/x-ndjson",
        OutputFormat::Csv => "text/csv",
        OutputFormat::Parquet => "application/vnd.apache.parquet",
        OutputFormat::Json | OutputFormat::Table => "application/json",
    }
}

fn typed(body: Body, content_type: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A writer of `format` for the rows of `view` into `out`.
fn new_writer<W: Write + Send>(
    format: OutputFormat,
    header: bool,
    view: &ViewDefinition,
    out: W,
) -> Result<StreamingWriter<W>, String> {
    match format {
        OutputFormat::Csv => Ok(StreamingWriter::csv(out, header)),
        other => StreamingWriter::new(other, view_schema(view), out).map_err(|e| e.to_string()),
    }
}

/// The view over the inline `resources` (those of the view's type), as
/// the requested format's bytes.
fn run_inline(runner: &ViewRunner<'_>, request: &RunRequest) -> Result<Vec<u8>, FhirError> {
    let mut rows = Vec::new();
    for resource in &request.resources {
        if resource["resourceType"] != runner.view().resource.as_str() {
            continue;
        }
        let text = resource.to_string();
        let parsed = json::parse(&text).map_err(|e| FhirError::invalid(format!("resource: {e}")))?;
        rows.extend(runner.rows(&parsed).map_err(|e| unprocessable(e.to_string()))?);
    }
    if let Some(limit) = request.limit {
        rows.truncate(limit);
    }
    if matches!(request.format, OutputFormat::Json | OutputFormat::Ndjson) {
        return Ok(rows_json(runner.view(), &rows, request.format));
    }
    let batch = rows_to_batch(runner.schema(), &rows).map_err(|e| unprocessable(e.to_string()))?;
    let mut out = Vec::new();
    let mut writer =
        new_writer(request.format, request.header, runner.view(), &mut out).map_err(FhirError::internal)?;
    writer.write(&batch).map_err(|e| FhirError::internal(e.to_string()))?;
    writer
        .finish("the response")
        .map_err(|e| FhirError::internal(e.to_string()))?;
    Ok(out)
}

/// `rows` of `view` as JSON (an array) or NDJSON objects: every column,
/// null when empty, values in their FHIR types (a decimal as a number).
fn rows_json(view: &ViewDefinition, rows: &[Row], format: OutputFormat) -> Vec<u8> {
    let cell_value = |value: &CellValue| match value {
        CellValue::Bool(b) => Value::Bool(*b),
        CellValue::Int(i) => Value::from(*i),
        CellValue::Decimal(d) => serde_json::from_str(d).unwrap_or_else(|_| Value::String(d.clone())),
        CellValue::Str(s) => Value::String(s.clone()),
    };
    let objects = rows.iter().map(|row| {
        let object: serde_json::Map<String, Value> = view
            .columns
            .iter()
            .zip(row)
            .map(|(column, cell)| {
                let value = match cell {
                    Cell::Null => Value::Null,
                    Cell::One(v) => cell_value(v),
                    Cell::Many(values) => Value::Array(values.iter().map(cell_value).collect()),
                };
                (column.name.clone(), value)
            })
            .collect();
        Value::Object(object)
    });
    match format {
        OutputFormat::Ndjson => objects.map(|o| o.to_string() + "\n").collect::<String>().into_bytes(),
        _ => Value::Array(objects.collect()).to_string().into_bytes(),
    }
}

/// Streams the view over the warehouse into `writer` (at most `limit`
/// rows: the scan stops once they are written), then finishes it.
async fn stream_view(
    warehouse: &fhirlake_engine::warehouse::Warehouse,
    view: &Value,
    format: OutputFormat,
    writer: Arc<Mutex<Option<StreamingWriter<BodyWriter>>>>,
    limit: Option<usize>,
) -> Result<(), String> {
    let definition = ViewDefinition::from_json(view).map_err(|e| e.to_string())?;
    let runner = ViewRunner::new(&definition).map_err(|e| e.to_string())?;
    let for_sink = writer.clone();
    let mut left = limit.unwrap_or(usize::MAX);
    let json = matches!(format, OutputFormat::Json | OutputFormat::Ndjson);
    let result = run_view(warehouse, &runner, move |batch| {
        let mut guard = for_sink.lock().map_err(|_| "output writer poisoned")?;
        let Some(writer) = guard.as_mut() else { return Ok(()) };
        let take = batch.num_rows().min(left);
        let mut part = batch.slice(0, take);
        if json {
            part = decimals_as_numbers(&part)?;
        }
        writer.write(&part)?;
        left -= take;
        if left == 0 {
            return Err(LIMIT_REACHED.into());
        }
        Ok(())
    })
    .await;
    if let Err(e) = result
        && !e.to_string().contains(LIMIT_REACHED)
    {
        return Err(e.to_string());
    }
    let finished = writer.lock().ok().and_then(|mut g| g.take());
    let Some(writer) = finished else { return Ok(()) };
    // Its last bytes go through the channel with a blocking send.
    tokio::task::spawn_blocking(move || writer.finish("the response").map_err(|e| e.to_string()))
        .await
        .map_err(|e| e.to_string())?
}

/// The sink's way to stop the scan once `_limit` rows are written.
const LIMIT_REACHED: &str = "_limit reached";

/// The response body as the view's writer writes it.
type BodyWriter = std::io::BufWriter<ChannelWriter>;

/// Bytes written become chunks of the response body.
struct ChannelWriter(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>);

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(data)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
