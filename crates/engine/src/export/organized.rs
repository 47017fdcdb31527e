//! `organizeOutputBy=Patient`: NDJSON files of patient blocks. Each block is
//! a header line (a `Parameters` naming the Patient), the Patient resource,
//! then every other exported resource in that patient's compartment. A
//! block is never split: a new file starts only between blocks, so a file
//! can exceed the size limit by at most one block.
//!
//! One plan over all exported types: each type's rows unnested by
//! compartment patient, restricted to the population, sorted by patient
//! (DataFusion's external sort, spilling under the session's memory
//! limit). A resource in two members' compartments is in both blocks.

use std::collections::{BTreeMap, HashMap};

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::common::Column;
use datafusion::logical_expr::{JoinType, LogicalPlan, LogicalPlanBuilder};
use datafusion::prelude::{DataFrame, Expr, col, lit};
use futures::StreamExt;
use serde_json::json;

use super::elements::ElementFilter;
use super::params::ExportRequest;
use super::run::{ChangeWindow, ExportSettings, ExportTarget, TypeResult, resource_frame, semi_join};
use super::sink::FileNamer;
use super::sink::ndjson::NdjsonSink;
use super::{ExportError, Progress};
use crate::cohort::CohortEngine;
use crate::search::SearchQuery;
use crate::warehouse::schema::resource_columns::{ID, PATIENTS, RESOURCE};

const PATIENT: &str = "patient";
const RESOURCE_TYPE: &str = "resource_type";
/// false for the block's own Patient resource, so it sorts first.
const LATER: &str = "later";

/// Writes the Patient blocks of `types`; returns the files.
#[allow(clippy::too_many_arguments)]
pub(super) async fn export_by_patient(
    engine: &CohortEngine,
    request: &ExportRequest,
    window: &ChangeWindow,
    membership: Option<&Expr>,
    members: Option<&LogicalPlan>,
    filters: &BTreeMap<&str, Vec<SearchQuery>>,
    types: &[String],
    target: &ExportTarget,
    settings: &ExportSettings,
    progress: &Progress,
) -> TypeResult {
    let frame = match blocks_frame(engine, window, membership, members, filters, types).await {
        Ok(Some(frame)) => frame,
        Ok(None) => return Ok(Vec::new()),
        Err(e) => return Err((e, Vec::new())),
    };
    progress.set(format!("sorting the resources of {} types by patient", types.len()));
    let namer = FileNamer::new(target.location.clone(), &target.dir, "Patient-blocks", "ndjson");
    let mut sink = NdjsonSink::new(namer, None, settings.max_file_bytes).split_only_on_roll();
    match write_blocks(frame, request, types, &mut sink).await {
        Ok(()) => sink.finish().await.map_err(|e| (e, Vec::new())),
        Err(e) => {
            let partial = sink.abort().await;
            Err((e, partial))
        }
    }
}

/// `(patient, later, resource_type, id, resource)` of every exported row,
/// sorted for writing; `None` when no type has data.
async fn blocks_frame(
    engine: &CohortEngine,
    window: &ChangeWindow,
    membership: Option<&Expr>,
    members: Option<&LogicalPlan>,
    filters: &BTreeMap<&str, Vec<SearchQuery>>,
    types: &[String],
) -> Result<Option<DataFrame>, ExportError> {
    let mut union: Option<DataFrame> = None;
    for resource_type in types {
        let mut frame = resource_frame(engine, resource_type, window).await?;
        if let Some(predicate) = membership {
            frame = frame.filter(predicate.clone())?;
        }
        if let Some(queries) = filters.get(resource_type.as_str()) {
            frame = semi_join(engine, engine.resource_ids_plan(queries)?, frame)?;
        }
        let later = if resource_type == "Patient" {
            col(ID).not_eq(col(PATIENTS))
        } else {
            lit(true)
        };
        let frame = frame.unnest_columns(&[PATIENTS])?.select(vec![
            col(PATIENTS).alias(PATIENT),
            later.alias(LATER),
            lit(resource_type.as_str()).alias(RESOURCE_TYPE),
            col(ID),
            col(RESOURCE),
        ])?;
        union = Some(match union {
            None => frame,
            Some(previous) => previous.union(frame)?,
        });
    }
    let Some(frame) = union else {
        return Ok(None);
    };
    // Unnesting gives each row every patient of its compartment: keep the
    // members' rows (the scan predicate kept resources with any member).
    let frame = match members {
        Some(members) => {
            let plan = LogicalPlanBuilder::from(members.clone())
                .alias("members")?
                .join(
                    frame.into_unoptimized_plan(),
                    JoinType::RightSemi,
                    (
                        vec![Column::new(Some("members"), "member")],
                        vec![Column::from_name(PATIENT)],
                    ),
                    None,
                )?
                .build()?;
            DataFrame::new(engine.session().state(), plan)
        }
        _ => frame.filter(col(PATIENT).is_not_null())?,
    };
    Ok(Some(frame.sort(vec![
        col(PATIENT).sort(true, false),
        col(LATER).sort(true, false),
        col(RESOURCE_TYPE).sort(true, false),
        col(ID).sort(true, false),
    ])?))
}

async fn write_blocks(
    frame: DataFrame,
    request: &ExportRequest,
    types: &[String],
    sink: &mut NdjsonSink,
) -> Result<(), ExportError> {
    let elements: HashMap<&str, Option<ElementFilter>> = types
        .iter()
        .map(|t| (t.as_str(), ElementFilter::for_type(t, &request.elements)))
        .collect();
    let mut stream = frame.execute_stream().await?;
    let mut current: Option<String> = None;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let text = |i: usize| -> Result<ArrayRef, ExportError> {
            Ok(
                datafusion::arrow::compute::cast(batch.column(i), &datafusion::arrow::datatypes::DataType::Utf8)
                    .map_err(datafusion::error::DataFusionError::from)?,
            )
        };
        let (patients, types_column, resources) = (text(0)?, text(2)?, text(4)?);
        let (patients, types_column, resources) = (
            patients.as_string::<i32>(),
            types_column.as_string::<i32>(),
            resources.as_string::<i32>(),
        );
        for i in 0..batch.num_rows() {
            if patients.is_null(i) {
                continue;
            }
            let patient = patients.value(i);
            if current.as_deref() != Some(patient) {
                if sink.current_bytes() >= sink.max_bytes() {
                    sink.roll().await?;
                }
                let header = json!({
                    "resourceType": "Parameters",
                    "parameter": [{"name": "header", "valueReference": {"reference": format!("Patient/{patient}")}}],
                });
                sink.write_header(&header.to_string()).await?;
                current = Some(patient.to_string());
            }
            match elements.get(types_column.value(i)).and_then(Option::as_ref) {
                Some(filter) => sink.write_line(&filter.apply(resources.value(i))).await?,
                None => sink.write_line(resources.value(i)).await?,
            }
        }
    }
    Ok(())
}
