//! `fhirlake export`: Bulk Data export without the server, through the same
//! request type and the same run as `$export` jobs (`jobs::execute`), in
//! the foreground and without a job record.

use fhirlake::export::{
    ExportLevel, ExportRequest, ExportRequestBuilder, ExportSettings, ExportTarget, OutputFormat, Progress,
};
use fhirlake::jobs::{ExportRun, execute};
use fhirlake::store::StoreLocation;
use fhirlake::warehouse::Warehouse;
use futures::StreamExt;
use object_store::ObjectStoreExt;

/// Arguments of `fhirlake export` (`_type`, `_since`, … as flags).
#[derive(clap::Args)]
pub struct Args {
    /// Export the compartments of this Group's members (a cohort Group
    /// created through the server, or a Group of the loaded data).
    #[arg(long, conflicts_with = "patients")]
    group: Option<String>,
    /// Export the compartments of all patients (Patient-level export).
    #[arg(long)]
    patients: bool,
    /// Only these resource types (comma-separated or repeated): `_type`.
    #[arg(long = "type")]
    types: Vec<String>,
    /// Only resources changed after this instant: `_since`.
    #[arg(long)]
    since: Option<String>,
    /// Only resources changed at or before this instant: `_until`.
    #[arg(long)]
    until: Option<String>,
    /// FHIR search filters (`Type?param=value`), repeatable: `_typeFilter`.
    #[arg(long = "type-filter")]
    type_filters: Vec<String>,
    /// Top-level elements to keep (`Type.element` or `element`): `_elements`.
    #[arg(long)]
    elements: Vec<String>,
    /// Only these patients (ids or Patient/<id>): `patient`.
    #[arg(long = "patient")]
    patient: Vec<String>,
    /// Output format: `ndjson` or `parquet` (or their media types).
    #[arg(long, default_value = "ndjson", value_parser = output_format)]
    format: OutputFormat,
    /// Output folder (created) or object-store prefix (`s3://bucket/prefix`);
    /// must be empty.
    #[arg(long)]
    out: String,
    /// Split files at this size (MiB).
    #[arg(long, default_value_t = 256)]
    max_file_mib: u64,
    /// Write blocks per patient (header, Patient, its resources) instead
    /// of one type per file: `organizeOutputBy=Patient`.
    #[arg(long)]
    organize_by_patient: bool,
    /// `includeAssociatedData` values (`LatestProvenanceResources`,
    /// `RelevantProvenanceResources`).
    #[arg(long)]
    include_associated_data: Vec<String>,
}

/// `--format` as an export output format.
fn output_format(value: &str) -> Result<OutputFormat, String> {
    OutputFormat::parse(value).ok_or_else(|| format!("'{value}' is not an export format (ndjson, parquet)"))
}

impl Args {
    /// The export request these flags ask for, checked as the kick-off
    /// checks it.
    fn request(&self) -> anyhow::Result<ExportRequest> {
        let level = match (&self.group, self.patients) {
            (Some(id), _) => ExportLevel::Group(id.clone()),
            (None, true) => ExportLevel::Patient,
            (None, false) => ExportLevel::System,
        };
        let mut builder = ExportRequestBuilder::new(level, true, false)?;
        builder.output_format(self.format);
        for types in &self.types {
            builder.types(types)?;
        }
        for filter in &self.type_filters {
            builder.type_filters(filter)?;
        }
        for elements in &self.elements {
            builder.elements(elements)?;
        }
        for patient in self.patient.iter().flat_map(|p| p.split(',')) {
            if patient.contains('/') {
                builder.patients(patient)?;
            } else {
                builder.patients(&format!("Patient/{patient}"))?;
            }
        }
        if let Some(since) = &self.since {
            builder.since(since)?;
        }
        if let Some(until) = &self.until {
            builder.until(until)?;
        }
        for data in &self.include_associated_data {
            builder.include_associated_data(data)?;
        }
        if self.organize_by_patient {
            builder.organize_output_by("Patient")?;
        }
        Ok(builder.build()?.request)
    }

    /// Exports into `--out` and writes its manifest.json.
    pub async fn run(self, warehouse: &str) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let request = self.request()?;
        let transaction_time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let warehouse = Warehouse::open(warehouse)?;
        let snapshot = warehouse
            .current()
            .await?
            .ok_or_else(|| anyhow::anyhow!("the warehouse is empty: load data first (fhirlake load …)"))?;
        let target = ExportTarget {
            location: empty_location(&self.out).await?,
            dir: String::new(),
        };
        let out_url = target.location.display_of(&target.location.prefix);
        let settings = ExportSettings {
            max_file_bytes: self.max_file_mib.max(1) * 1024 * 1024,
            ..ExportSettings::default()
        };
        let run = ExportRun {
            snapshot_version: snapshot.version,
            request: request.clone(),
            target: target.clone(),
            settings,
            notes: Vec::new(),
        };
        let output = execute(&warehouse, run, &Progress::default()).await?;
        let manifest = fhirlake::export::manifest::manifest(
            &transaction_time,
            &format!("fhirlake export --warehouse {}", warehouse.root().url()),
            false,
            &output,
            request.organize_by_patient.then_some("Patient"),
            |name| name.to_string(),
        );
        let manifest_path = target.location.child("manifest.json");
        target
            .location
            .store
            .put(&manifest_path, serde_json::to_vec_pretty(&manifest)?.into())
            .await
            .map_err(|e| target.location.error("writing", &manifest_path, e))?;
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "exported {} resources in {} files ({:.1} MiB) to {} in {:.2} s ({:.0} MiB/s)",
            output.resources,
            output.output.len(),
            output.bytes as f64 / 1048576.0,
            out_url,
            seconds,
            output.bytes as f64 / 1048576.0 / seconds.max(1e-9)
        );
        Ok(())
    }
}

/// The output location `out`, which must be empty: an earlier export's
/// files would be silently mixed with or replaced by this one's.
async fn empty_location(out: &str) -> anyhow::Result<StoreLocation> {
    let location = StoreLocation::parse(out, true)?;
    let existing = location
        .store
        .list(Some(&location.prefix))
        .next()
        .await
        .transpose()
        .map_err(|e| location.error("listing", &location.prefix, e))?;
    if existing.is_some() {
        anyhow::bail!("output location {out} is not empty: export into a new or empty folder");
    }
    Ok(location)
}
