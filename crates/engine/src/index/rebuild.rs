//! Recomputing the index of a resource table from its stored resources, for
//! tables a load merged (their rows changed, so their index rows must too).

use std::collections::BTreeMap;

use tokio::runtime::Handle;

use super::writer::{
    CompartmentReferences, IndexOutput, IndexTarget, IndexWriteError, IndexWriter, combine_compartment_references,
};
use crate::fhir::PatientCompartment;
use crate::search::SearchRegistry;
use crate::warehouse::scan::scan_resources;
use crate::warehouse::{DataFile, Warehouse};

/// A rebuilt index of one resource type.
#[derive(Debug, Default)]
pub struct RebuiltIndex {
    /// New files per index table key; a table absent here has no rows.
    pub tables: BTreeMap<String, IndexOutput>,
    /// What [`IndexWriter::compartment_references`] found over the whole table.
    pub compartment_references: CompartmentReferences,
}

/// Rebuilds every index table of `resource_type` from `files` (its resource
/// table). Needs a multi-threaded tokio runtime.
pub async fn rebuild_index(
    warehouse: &Warehouse,
    resource_type: &'static str,
    files: &[DataFile],
    token: &str,
    registry: &'static SearchRegistry,
    compartment: &'static PatientCompartment,
) -> Result<RebuiltIndex, IndexWriteError> {
    let handle = Handle::current();
    let root = warehouse.root().clone();
    let make_state = |p: usize| {
        let target = IndexTarget {
            root: &root,
            token,
            part: format!("r{p}"),
            handle: handle.clone(),
        };
        (IndexWriter::new(target, registry), Vec::new())
    };
    let process = |(writer, patients): &mut (IndexWriter<'_>, Vec<String>), resource: &crate::json::JsonValue<'_>| {
        patients.clear();
        compartment.patients_of(resource_type, resource, patients);
        writer.add(resource_type, resource, patients)
    };
    let states = scan_resources(warehouse, files, make_state, process).await?;
    // Finishing writes the last runs, which blocks on uploads: do it on
    // plain threads, as the scan does.
    let finished = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let handles: Vec<_> = states
                .into_iter()
                .map(|(mut writer, _)| {
                    scope.spawn(move || {
                        let result = writer.finish();
                        let references = writer.compartment_references();
                        (writer.into_outputs(), references, result)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| IndexWriteError::Thread))
                .collect::<Result<Vec<_>, _>>()
        })
    })?;
    let mut merged: BTreeMap<String, IndexOutput> = BTreeMap::new();
    let mut compartment_references = CompartmentReferences::new();
    let mut failure = None;
    for (outputs, references, result) in finished {
        combine_compartment_references(&mut compartment_references, references);
        if let Err(e) = result {
            failure.get_or_insert(e);
        }
        for (key, output) in outputs {
            let entry = merged.entry(key).or_default();
            entry.files.extend(output.files);
            entry.rows += output.rows;
        }
    }
    if let Some(e) = failure {
        let written: Vec<_> = merged.into_values().flat_map(|o| o.files).collect();
        warehouse.delete_files(&written).await;
        return Err(e);
    }
    Ok(RebuiltIndex {
        tables: merged,
        compartment_references,
    })
}
