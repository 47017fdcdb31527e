//! Writing index tables during a load: each worker (or rebuild partition)
//! owns one [`IndexWriter`], which buffers rows per (kind, resource type) and
//! writes them as sorted runs into one Parquet file per table.

use std::collections::{BTreeMap, BTreeSet};

use tokio::runtime::Handle;

use super::buffer::IndexBuffer;
use super::{IndexKind, index_table_key};
use crate::fhir::model::FastMap;
use crate::json::JsonValue;
use crate::search::extract::{IndexValue, TypeIndexer};
use crate::search::registry::Derivation;
use crate::search::{ParamType, SearchRegistry};
use crate::store::StoreLocation;
use crate::warehouse::DataFile;
use crate::warehouse::parquet_file::{ParquetFileWriter, index_writer_properties, scratch_writer_properties};

/// Buffered index rows of one writer are sorted and written once they hold
/// this much; a larger budget means longer sorted runs (better pruning).
const BUFFER_BUDGET: usize = 96 * 1024 * 1024;
/// A run is cut at this many rows even under the budget.
const RUN_ROWS: usize = 1 << 20;
/// File-name ending of a run written with the final index settings
/// (compressed, statistics, page index): usable as an index file as it is.
pub const FINAL_RUN_SUFFIX: &str = "-final.parquet";

/// Errors of writing the index.
#[derive(Debug, thiserror::Error)]
pub enum IndexWriteError {
    /// Building or sorting a batch failed.
    #[error("building index batch: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// Writing Parquet failed.
    #[error("writing index Parquet: {0}")]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),
    /// Reading the stored resources of a rebuild failed.
    #[error(transparent)]
    Warehouse(#[from] crate::warehouse::WarehouseError),
    /// A thread writing a rebuilt index panicked.
    #[error("index rebuild thread failed")]
    Thread,
}

struct IndexTable {
    buffer: IndexBuffer,
}

/// Where a writer puts its files.
#[derive(Clone)]
pub struct IndexTarget<'a> {
    /// Warehouse root.
    pub root: &'a StoreLocation,
    /// Unique prefix of this load's file names.
    pub token: &'a str,
    /// Distinguishes writers of one load (`w0`, `r3`).
    pub part: String,
    /// Runtime for object-store calls.
    pub handle: Handle,
}

/// The index rows one writer produced for one table.
#[derive(Debug, Default)]
pub struct IndexOutput {
    /// Completed files.
    pub files: Vec<DataFile>,
    /// Rows written.
    pub rows: u64,
}

/// Per resource type, the reference parameters whose Patient targets were
/// exactly the Patient compartment of every resource indexed (see
/// [`IndexWriter::compartment_references`]).
pub type CompartmentReferences = BTreeMap<String, BTreeSet<String>>;

/// Adds what another writer found for other resources to `into`: a
/// parameter holds for a type only if it held in every writer that saw the
/// type.
pub fn combine_compartment_references(into: &mut CompartmentReferences, other: CompartmentReferences) {
    for (resource_type, params) in other {
        match into.entry(resource_type) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(params);
            }
            std::collections::btree_map::Entry::Occupied(mut slot) => slot.get_mut().retain(|p| params.contains(p)),
        }
    }
}

/// Indexes resources and writes the index tables.
pub struct IndexWriter<'a> {
    target: IndexTarget<'a>,
    registry: &'static SearchRegistry,
    indexers: FastMap<&'static str, TypeIndexer<'static>>,
    /// Looked up for every index value, so hashed (a B-tree compared type
    /// names several times per value).
    tables: FastMap<(IndexKind, &'static str), IndexTable>,
    /// Bytes held by all of `tables`.
    buffered: usize,
    values: Vec<(&'static str, IndexValue)>,
    outputs: BTreeMap<String, IndexOutput>,
    failures: u64,
    /// Per type seen: the reference parameters (that may target a Patient)
    /// whose Patient targets equalled the compartment of every resource so far.
    compartment_references: FastMap<&'static str, Vec<PatientReference>>,
    /// Scratch: which compartment patients a parameter's targets covered.
    covered: Vec<bool>,
}

impl<'a> IndexWriter<'a> {
    /// A writer into `target`.
    pub fn new(target: IndexTarget<'a>, registry: &'static SearchRegistry) -> Self {
        Self {
            target,
            registry,
            indexers: FastMap::default(),
            tables: FastMap::default(),
            buffered: 0,
            values: Vec::new(),
            outputs: BTreeMap::new(),
            failures: 0,
            compartment_references: FastMap::default(),
            covered: Vec::new(),
        }
    }

    /// Indexes one resource of `resource_type` whose compartment is `patients`.
    pub fn add(
        &mut self,
        resource_type: &'static str,
        resource: &JsonValue<'_>,
        patients: &[String],
    ) -> Result<(), IndexWriteError> {
        let Some(id) = resource.get("id").and_then(JsonValue::as_str) else {
            return Ok(());
        };
        let registry = self.registry;
        let indexer = self
            .indexers
            .entry(resource_type)
            .or_insert_with(|| TypeIndexer::new(registry, resource_type));
        self.values.clear();
        // A parameter whose expression fails on this resource is skipped: the
        // resource is valid FHIR, and the other parameters still index it.
        self.failures += indexer.index_lenient(resource, &mut self.values);
        let alive = self
            .compartment_references
            .entry(resource_type)
            .or_insert_with(|| patient_reference_params(registry, resource_type));
        alive.retain(|param| targets_are_compartment(param, &self.values, patients, &mut self.covered));
        let mut full = None;
        for (param, value) in &self.values {
            let kind = kind_of(value);
            let table = self.tables.entry((kind, resource_type)).or_insert_with(|| IndexTable {
                buffer: IndexBuffer::new(kind, resource_type),
            });
            let before = table.buffer.bytes();
            table.buffer.append(param, value, id, patients);
            self.buffered += table.buffer.bytes() - before;
            if table.buffer.rows() >= RUN_ROWS {
                full = Some((kind, resource_type));
            }
        }
        if let Some(key) = full {
            self.write_run(key, false)?;
        }
        if self.buffered > BUFFER_BUDGET
            && let Some(key) = self
                .tables
                .iter()
                .max_by_key(|(_, t)| t.buffer.bytes())
                .map(|(k, _)| *k)
        {
            self.write_run(key, false)?;
        }
        Ok(())
    }

    /// Per resource type indexed, the reference parameters whose Patient (or
    /// untyped) targets were exactly the Patient compartment of every
    /// resource. A `_has` through such a parameter can read the compartment
    /// column of its inner clause instead of joining the type's reference
    /// rows (docs/architecture.md, "Cohort compiler").
    pub fn compartment_references(&self) -> CompartmentReferences {
        self.compartment_references
            .iter()
            .map(|(t, params)| (t.to_string(), params.iter().map(|p| p.code.to_string()).collect()))
            .collect()
    }

    /// Parameter evaluations that failed (and were skipped) so far.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Sorts the buffered rows of one table and writes them as one sorted
    /// run; `compact` merges the runs of a load into the table's real files.
    /// A `last` run of a table this writer wrote nothing else for is written
    /// with the final settings, so a table of a few such runs needs no merge.
    fn write_run(&mut self, key: (IndexKind, &'static str), last: bool) -> Result<(), IndexWriteError> {
        let Some(table) = self.tables.get_mut(&key) else {
            return Ok(());
        };
        if table.buffer.rows() == 0 {
            return Ok(());
        }
        self.buffered -= table.buffer.bytes();
        let batch = table.buffer.take_sorted()?;
        let table_key = index_table_key(key.0, key.1);
        let output = self.outputs.entry(table_key.clone()).or_default();
        let only_run = last && output.files.is_empty();
        let path = format!(
            "tables/{table_key}/{}-{}-{:05}{}",
            self.target.token,
            self.target.part,
            output.files.len(),
            if only_run { FINAL_RUN_SUFFIX } else { ".parquet" }
        );
        let properties = if only_run {
            index_writer_properties()
        } else {
            scratch_writer_properties()
        };
        let mut writer = ParquetFileWriter::create_with(
            self.target.root,
            path,
            key.0.schema(),
            self.target.handle.clone(),
            properties,
        )?;
        match writer.write(&batch) {
            Ok(()) => {
                output.files.push(writer.finish()?);
                output.rows += batch.num_rows() as u64;
                Ok(())
            }
            Err(e) => {
                writer.abort();
                Err(e.into())
            }
        }
    }

    /// Writes what is buffered as final runs.
    pub fn finish(&mut self) -> Result<(), IndexWriteError> {
        let mut keys: Vec<_> = self.tables.keys().copied().collect();
        keys.sort_unstable();
        for key in keys {
            self.write_run(key, true)?;
        }
        Ok(())
    }

    /// The files (sorted runs) written, per index table key; also after a
    /// failure, so the caller can delete them. Unwritten buffers are dropped.
    pub fn into_outputs(self) -> BTreeMap<String, IndexOutput> {
        self.outputs
    }
}

/// The supported reference parameters of `resource_type` that may target a Patient.
fn patient_reference_params(registry: &'static SearchRegistry, resource_type: &str) -> Vec<PatientReference> {
    registry
        .supported(resource_type)
        .into_iter()
        .filter(|p| {
            p.param_type == ParamType::Reference && (p.targets.is_empty() || p.targets.iter().any(|t| t == "Patient"))
        })
        .filter_map(|p| match &p.derived {
            None => Some(PatientReference {
                code: &p.code,
                rows_of: &p.code,
                patient_typed_only: false,
            }),
            Some(Derivation::TargetsOf { base, target }) if target == "Patient" => Some(PatientReference {
                code: &p.code,
                rows_of: base,
                patient_typed_only: true,
            }),
            Some(_) => None,
        })
        .collect()
}

/// A reference parameter that may point to Patients, and where its values
/// are among a resource's index values.
struct PatientReference {
    /// The parameter.
    code: &'static str,
    /// The parameter whose values it has (itself, or the base it is
    /// derived from).
    rows_of: &'static str,
    /// Only values whose target is known to be a Patient are its own (a
    /// parameter derived as `base.where(resolve() is Patient)`).
    patient_typed_only: bool,
}

/// Whether the targets of `param` among `values` that are Patients (or of
/// unknown type, unless the parameter only has typed Patient targets) are
/// exactly `patients` (the resource's compartment).
fn targets_are_compartment(
    param: &PatientReference,
    values: &[(&'static str, IndexValue)],
    patients: &[String],
    covered: &mut Vec<bool>,
) -> bool {
    covered.clear();
    covered.resize(patients.len(), false);
    for (code, value) in values {
        if *code != param.rows_of {
            continue;
        }
        let IndexValue::Reference { resource_type, id } = value else {
            continue;
        };
        let patient = match resource_type.as_deref() {
            Some(t) => t == "Patient",
            None => !param.patient_typed_only,
        };
        if !patient {
            continue;
        }
        match patients.iter().position(|p| p == id) {
            Some(i) => covered[i] = true,
            None => return false,
        }
    }
    covered.iter().all(|&c| c)
}

fn kind_of(value: &IndexValue) -> IndexKind {
    match value {
        IndexValue::Token { .. } => IndexKind::Token,
        IndexValue::Date(_) => IndexKind::Date,
        IndexValue::String { .. } => IndexKind::String,
        IndexValue::Reference { .. } => IndexKind::Reference,
        IndexValue::Quantity { .. } => IndexKind::Quantity,
        IndexValue::Number(_) => IndexKind::Number,
        IndexValue::Uri(_) => IndexKind::Uri,
    }
}
