//! The phases of a load after its input is read: gathering the workers'
//! files per table, applying deletions and merging tables that gained
//! duplicate ids, rebuilding the views and index of merged tables,
//! compacting index runs, and committing one new version. A failure
//! deletes every file the load wrote and commits nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures::StreamExt;

use super::progress::Progress;
use super::tombstones::TombstoneRows;
use super::worker::{StageTimes, WorkerOutput};
use super::{IngestError, LoadReport, LoadStages, Prepared, TableReport, compact_parallelism};
use crate::index::compact::compact;
use crate::index::rebuild::rebuild_index;
use crate::index::writer::{CompartmentReferences, combine_compartment_references};
use crate::index::{INDEX_TABLE_PREFIX, IndexKind, parse_index_table_key};
use crate::search::SearchRegistry;
use crate::view::ViewRunner;
use crate::view::catalog::view_table_key;
use crate::view::materialize::rebuild_views;
use crate::warehouse::merge::{Deletions, has_duplicate_ids, merge_latest, patients_of_deleted};
use crate::warehouse::touched::{TOUCHED_DETAIL, TOUCHED_TABLE, touched_patients, write_touched};
use crate::warehouse::{
    DataFile, REJECTS_TABLE, Snapshot, TOMBSTONES_TABLE, TableEntry, TableKind, Warehouse, manifest, now_rfc3339,
};

/// A table's new files over all workers, and how many rows the load read
/// for it.
type NewFiles = (Vec<DataFile>, u64);

/// Index runs per index table key, and whether they come from a rebuild.
type IndexRuns = BTreeMap<String, (Vec<DataFile>, bool)>;

/// The state of a load between reading and committing.
pub(super) struct LoadCommit<'a> {
    warehouse: &'a Warehouse,
    prepared: &'a Prepared,
    /// Each table's new files.
    new_files: BTreeMap<String, NewFiles>,
    /// Deleted ids per type: (id, load_seq of the deleting line).
    deletions: BTreeMap<String, Vec<(String, i64)>>,
    compartment_references: CompartmentReferences,
    /// The snapshot being built (the base plus this load).
    snapshot: Snapshot,
    report: LoadReport,
    /// Files written after reading (merges, rebuilds, compactions): removed
    /// if the load fails.
    merged_files: Vec<DataFile>,
    /// The compartment patients of every resource the load added, changed
    /// or deleted (before and after the change).
    touched: BTreeSet<String>,
    /// Index runs replaced by their compacted form: deleted once committed.
    superseded_runs: Vec<DataFile>,
    /// Resource types whose table was rewritten.
    merged_types: Vec<String>,
}

impl<'a> LoadCommit<'a> {
    /// Gathers the workers' outputs: each table's new files, the
    /// deletions, what the index writers found, and the stage times.
    pub(super) fn gather(
        warehouse: &'a Warehouse,
        prepared: &'a Prepared,
        outputs: Vec<WorkerOutput>,
        progress: &Arc<Progress>,
        started: Instant,
    ) -> Self {
        let mut new_files: BTreeMap<String, NewFiles> = BTreeMap::new();
        let mut deletions: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
        let mut compartment_references = CompartmentReferences::new();
        let mut stages = StageTimes::default();
        for output in outputs {
            combine_compartment_references(&mut compartment_references, output.compartment_references);
            stages.add(&output.stages);
            for deletion in output.deletions {
                deletions
                    .entry(deletion.resource_type.to_string())
                    .or_default()
                    .push((deletion.id, deletion.load_seq));
            }
            for (name, table) in output.tables {
                let entry = new_files.entry(name).or_default();
                entry.0.extend(table.files);
                entry.1 += table.resources;
            }
        }
        tracing::info!(
            resources = progress.resources.load(Ordering::Relaxed),
            seconds = started.elapsed().as_secs_f64(),
            "input read; merging and committing"
        );
        let snapshot = prepared.base.clone().unwrap_or_else(|| Snapshot {
            format: manifest::FORMAT.into(),
            ..Default::default()
        });
        let report = LoadReport {
            files: prepared.files.len(),
            stored_bytes: progress.stored_bytes.load(Ordering::Relaxed),
            ndjson_bytes: progress.ndjson_bytes.load(Ordering::Relaxed),
            resources: progress.resources.load(Ordering::Relaxed),
            rejected: progress.rejected.load(Ordering::Relaxed),
            stages: LoadStages {
                read_seconds: started.elapsed().as_secs_f64(),
                parse_seconds: stages.parse.as_secs_f64(),
                views_seconds: stages.views.as_secs_f64(),
                index_seconds: stages.index.as_secs_f64(),
                tables_seconds: stages.tables.as_secs_f64(),
                ..Default::default()
            },
            ..Default::default()
        };
        Self {
            warehouse,
            prepared,
            new_files,
            deletions,
            compartment_references,
            snapshot,
            report,
            merged_files: Vec::new(),
            touched: BTreeSet::new(),
            superseded_runs: Vec::new(),
            merged_types: Vec::new(),
        }
    }

    /// Merges, rebuilds, compacts and commits.
    pub(super) async fn run(&mut self, sources: &[String]) -> Result<(), IngestError> {
        let tombstones = self.merge_resource_tables().await?;
        self.record_tombstones(tombstones).await?;
        self.rebuild_merged_views().await?;
        self.add_new_views();
        if let Some(registry) = self.prepared.search {
            let runs = self.index_runs(registry).await?;
            self.compact_index(runs).await?;
        }
        self.commit(sources).await
    }

    /// The resource tables (and `_rejects`) this load touched, each kept
    /// as written when its ids are new, else merged with its older rows
    /// to one row per resource (the latest version), deletions applied.
    /// Returns the tombstones of the deleted resources found.
    async fn merge_resource_tables(&mut self) -> Result<TombstoneRows, IngestError> {
        let warehouse = self.warehouse;
        let mut tables: Vec<(String, NewFiles)> = self
            .new_files
            .iter()
            .filter(|(name, _)| !name.starts_with("views/") && !name.starts_with(INDEX_TABLE_PREFIX))
            .map(|(name, files)| (name.clone(), files.clone()))
            .collect();
        // Types that only lose resources are rewritten too.
        for resource_type in self.deletions.keys() {
            if !self.new_files.contains_key(resource_type) && self.snapshot.tables.contains_key(resource_type) {
                tables.push((resource_type.clone(), (Vec::new(), 0)));
            }
        }
        let mut tombstones = TombstoneRows::default();
        for (name, (files, loaded)) in tables {
            let deleted = self.deletions.get(name.as_str()).map(|ids| Deletions {
                ids,
                deleted_at: self.prepared.loaded_at,
            });
            let kind = if name == REJECTS_TABLE {
                TableKind::Rejects
            } else {
                TableKind::Resource
            };
            let old = self
                .snapshot
                .tables
                .get(&name)
                .map(|t| t.files.clone())
                .unwrap_or_default();
            if kind == TableKind::Resource {
                let deleted_ids: Vec<&str> = deleted
                    .iter()
                    .flat_map(|d| d.ids.iter().map(|(id, _)| id.as_str()))
                    .collect();
                self.touched
                    .extend(touched_patients(warehouse, &old, &files, &deleted_ids).await?);
            }
            tracing::debug!(table = name.as_str(), files = files.len(), "checking for duplicate ids");
            let mut merged = false;
            let table_files = if kind == TableKind::Rejects {
                old.into_iter().chain(files).collect()
            } else if deleted.is_none() && old.is_empty() && !has_duplicate_ids(warehouse, &files).await? {
                files
            } else {
                merged = true;
                self.merged_types.push(name.clone());
                let inputs: Vec<DataFile> = old.into_iter().chain(files).collect();
                if let Some(deleted) = &deleted {
                    let patients = patients_of_deleted(warehouse, &inputs, deleted).await?;
                    tombstones.add(&name, deleted, &patients);
                }
                let out = merge_latest(warehouse, &name, &inputs, &self.prepared.token, deleted.as_ref()).await?;
                self.merged_files.extend(out.iter().cloned());
                out
            };
            let entry = TableEntry::new(kind, table_files);
            let rows = entry.rows();
            self.report
                .tables
                .insert(name.clone(), TableReport { loaded, rows, merged });
            self.snapshot.tables.insert(name, entry);
        }
        Ok(tombstones)
    }

    /// Writes the tombstones, with those of deletions of resources this
    /// warehouse never held (a downstream copy may hold them).
    async fn record_tombstones(&mut self, mut tombstones: TombstoneRows) -> Result<(), IngestError> {
        for (resource_type, ids) in &self.deletions {
            if !tombstones.has_type(resource_type) {
                let deleted = Deletions {
                    ids,
                    deleted_at: self.prepared.loaded_at,
                };
                tombstones.add(resource_type, &deleted, &Default::default());
            }
        }
        if tombstones.is_empty() {
            return Ok(());
        }
        let count = tombstones.len() as u64;
        let file = tombstones
            .write(self.warehouse, &self.prepared.token, self.prepared.loaded_at)
            .await?;
        self.merged_files.push(file.clone());
        let entry = self
            .snapshot
            .tables
            .entry(TOMBSTONES_TABLE.to_string())
            .or_insert_with(|| TableEntry::new(TableKind::Tombstones, Vec::new()));
        entry.files.push(file);
        let report = TableReport {
            loaded: count,
            rows: entry.rows(),
            merged: false,
        };
        self.report.tables.insert(TOMBSTONES_TABLE.to_string(), report);
        Ok(())
    }

    /// Views of merged resource tables, recomputed from the merged table
    /// (the workers' rows may include superseded versions).
    async fn rebuild_merged_views(&mut self) -> Result<(), IngestError> {
        let views = &self.prepared.views;
        let runners = views
            .views()
            .iter()
            .map(ViewRunner::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| IngestError::View(e.into()))?;
        for resource_type in &self.merged_types {
            let indexes = views.for_type(resource_type);
            if indexes.is_empty() {
                continue;
            }
            let type_runners: Vec<&ViewRunner<'_>> = indexes.iter().map(|&i| &runners[i]).collect();
            let names: Vec<&str> = indexes.iter().map(|&i| views.name(i)).collect();
            let resource_files = self.table_files(resource_type);
            let rebuilt = rebuild_views(
                self.warehouse,
                &resource_files,
                &type_runners,
                &names,
                &self.prepared.token,
            )
            .await?;
            for (&i, files) in indexes.iter().zip(rebuilt) {
                self.merged_files.extend(files.iter().cloned());
                let key = view_table_key(views.name(i));
                let entry = TableEntry::view(files, resource_type);
                let loaded = self.new_files.get(&key).map_or(0, |(_, n)| *n);
                let report = TableReport {
                    loaded,
                    rows: entry.rows(),
                    merged: true,
                };
                self.report.tables.insert(key.clone(), report);
                self.snapshot.tables.insert(key, entry);
            }
        }
        Ok(())
    }

    /// Views of the other tables: the workers' rows, from the single parse.
    fn add_new_views(&mut self) {
        for (name, (files, loaded)) in self.new_files.iter().filter(|(n, _)| n.starts_with("views/")) {
            if self.report.tables.contains_key(name) {
                continue;
            }
            let name_of_view = name.strip_prefix("views/").unwrap_or(name);
            let entry = match self.prepared.views.resource_of(name_of_view) {
                Some(resource_type) => TableEntry::view(files.clone(), resource_type),
                None => TableEntry::new(TableKind::View, files.clone()),
            };
            let report = TableReport {
                loaded: *loaded,
                rows: entry.rows(),
                merged: false,
            };
            self.report.tables.insert(name.clone(), report);
            self.snapshot.tables.insert(name.clone(), entry);
        }
    }

    /// The sorted index runs of every index table this load touches: the
    /// workers' runs, except for merged resource tables, whose index
    /// tables are rebuilt whole from the merged table.
    async fn index_runs(&mut self, registry: &'static SearchRegistry) -> Result<IndexRuns, IngestError> {
        let mut index_runs = IndexRuns::new();
        for resource_type in &self.merged_types {
            let Some(resource_type) = self.prepared.types.get(resource_type) else {
                continue;
            };
            let resource_files = self.table_files(resource_type);
            let rebuilt = rebuild_index(
                self.warehouse,
                resource_type,
                &resource_files,
                &self.prepared.token,
                registry,
                self.prepared.compartment,
            )
            .await?;
            self.snapshot
                .tables
                .retain(|key, _| parse_index_table_key(key).is_none_or(|(_, t)| t != resource_type));
            // The rebuild saw every resource of the type, old and new.
            let found = rebuilt.compartment_references.get(resource_type).cloned();
            self.compartment_references
                .insert(resource_type.to_string(), found.unwrap_or_default());
            for (key, output) in rebuilt.tables {
                index_runs.insert(key, (output.files, true));
            }
        }
        for (name, (files, _)) in &self.new_files {
            let Some((_, resource_type)) = parse_index_table_key(name) else {
                continue;
            };
            if self.merged_types.iter().any(|t| t == resource_type) {
                continue;
            }
            index_runs.insert(name.clone(), (files.clone(), false));
        }
        Ok(index_runs)
    }

    /// Merges each index table's runs into one sorted sequence of files.
    /// Tables are merged two at a time: one merge is a single streaming
    /// sort-preserving merge plus a Parquet encoder, about one core's work,
    /// and there are dozens of tables.
    async fn compact_index(&mut self, index_runs: IndexRuns) -> Result<(), IngestError> {
        let work: Vec<_> = index_runs
            .into_iter()
            .filter_map(|(key, (runs, merged))| {
                let kind = parse_index_table_key(&key)?.0;
                Some((key, kind, runs, merged))
            })
            .collect();
        let (warehouse, token) = (self.warehouse, &self.prepared.token);
        let mut compacted: Vec<_> = futures::stream::iter(work)
            .map(|(key, kind, runs, merged)| async move {
                let files = compact(warehouse, kind, &key, &runs, token).await;
                (key, runs, merged, files)
            })
            .buffer_unordered(compact_parallelism())
            .collect()
            .await;
        compacted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut first_error = None;
        for (key, runs, merged, files) in compacted {
            if merged {
                // Rebuilt runs are this load's output too: removed if it fails.
                self.merged_files.extend(runs.iter().cloned());
            }
            match files {
                Ok(files) => self.add_index_table(key, &runs, merged, files),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Index table `key` gains its compacted `files` (replacing `runs`).
    fn add_index_table(&mut self, key: String, runs: &[DataFile], merged: bool, files: Vec<DataFile>) {
        // Runs are scratch files: the compacted files replace them (runs
        // kept as the table's files are not superseded).
        self.superseded_runs
            .extend(runs.iter().filter(|r| !files.contains(r)).cloned());
        self.merged_files.extend(files.iter().cloned());
        let loaded = self.new_files.get(&key).map_or(0, |(_, n)| *n);
        let entry = self
            .snapshot
            .tables
            .entry(key.clone())
            .or_insert_with(|| TableEntry::new(TableKind::Index, Vec::new()));
        // Index tables here are new or rebuilt whole, so what the writers
        // found holds for the whole table. An entry that already has files
        // (index rows left by a `--no-index` load that emptied the type)
        // gets no list: the check never saw those rows.
        let had_files = !entry.files.is_empty();
        entry.files.extend(files);
        if let Some((IndexKind::Reference, resource_type)) = parse_index_table_key(&key) {
            entry.compartment_references = match self.compartment_references.get(resource_type) {
                Some(params) if !had_files => params.iter().cloned().collect(),
                _ => Vec::new(),
            };
        }
        let report = TableReport {
            loaded,
            rows: entry.rows(),
            merged,
        };
        self.report.tables.insert(key, report);
    }

    /// The files of table `name` in the snapshot being built.
    fn table_files(&self, name: &str) -> Vec<DataFile> {
        self.snapshot
            .tables
            .get(name)
            .map(|t| t.files.clone())
            .unwrap_or_default()
    }

    /// Records the patients the load touched as the snapshot's `_touched`
    /// table (replacing the previous load's).
    async fn record_touched(&mut self) -> Result<(), IngestError> {
        self.snapshot.tables.remove(TOUCHED_TABLE);
        if self.touched.is_empty() {
            return Ok(());
        }
        let file = write_touched(self.warehouse, &self.prepared.token, &self.touched).await?;
        self.merged_files.push(file.clone());
        self.snapshot.tables.insert(
            TOUCHED_TABLE.to_string(),
            TableEntry::new(TableKind::Touched, vec![file]),
        );
        Ok(())
    }

    /// Commits the snapshot as the load's version.
    async fn commit(&mut self, sources: &[String]) -> Result<(), IngestError> {
        self.record_touched().await?;
        let touched = self.touched.len();
        let snapshot = &mut self.snapshot;
        snapshot.version = self.prepared.version;
        snapshot.committed_at = now_rfc3339();
        snapshot.operation = "load".into();
        snapshot.operation_details = serde_json::json!({
            "sources": sources,
            "files": self.prepared.files.len(),
            "resources": self.report.resources,
            "rejected": self.report.rejected,
            "loaded_at": self.prepared.loaded_at,
            TOUCHED_DETAIL: touched,
        });
        self.warehouse.commit(snapshot).await?;
        Ok(())
    }

    /// Deletes what nothing refers to: on failure every file the load
    /// wrote; on success the index runs compaction replaced and the new
    /// files a merge superseded (never visible). Returns the report.
    pub(super) async fn finish(
        self,
        result: Result<(), IngestError>,
        started: Instant,
    ) -> Result<LoadReport, IngestError> {
        let warehouse = self.warehouse;
        if let Err(e) = result {
            let all_new: Vec<DataFile> = self.new_files.values().flat_map(|(f, _)| f.clone()).collect();
            warehouse.delete_files(&all_new).await;
            warehouse.delete_files(&self.merged_files).await;
            warehouse.delete_files(&self.superseded_runs).await;
            return Err(e);
        }
        warehouse.delete_files(&self.superseded_runs).await;
        let mut report = self.report;
        let superseded: Vec<DataFile> = self
            .new_files
            .iter()
            .filter(|(name, _)| !name.starts_with(INDEX_TABLE_PREFIX))
            .filter(|(name, _)| report.tables.get(name.as_str()).is_none_or(|t| t.merged))
            .flat_map(|(_, (files, _))| files.clone())
            .collect();
        warehouse.delete_files(&superseded).await;
        report.version = self.prepared.version;
        report.seconds = started.elapsed().as_secs_f64();
        report.stages.finish_seconds = report.seconds - report.stages.read_seconds;
        Ok(report)
    }
}
