//! A DataFusion catalog over one warehouse snapshot: tables are resolved
//! when a query names them (and kept for the session), instead of a
//! provider being built for every table of the snapshot up front. Fronts
//! (the SQL CLI, and the network SQL fronts to come) register it as a
//! session's default catalog.
//!
//! Schemas: the default schema holds the analyst views by name, `_rejects`,
//! `_tombstones` and the index tables (`index_token`, …, each over every
//! type); schema [`RESOURCE_SCHEMA`] holds the raw resource tables (by type
//! name, in any case: `fhir."Observation"`, `fhir.observation`) and the
//! `compartment` view. Statements that create tables or views (`CREATE
//! VIEW`) add them to the session's own overlay, never to the warehouse.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, MemorySchemaProvider, SchemaProvider, TableProvider};
use datafusion::datasource::ViewTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::SessionContext;

use super::catalog::{RESOURCE_SCHEMA, files_provider, new_session, table_provider};
use super::index_tables::{IndexKind, parse_index_table_key};
use super::{DataFile, Snapshot, TableEntry, TableKind, Warehouse, WarehouseError};

/// DataFusion's name for the default schema.
pub const DEFAULT_SCHEMA: &str = "public";
/// The compartment view's name in [`RESOURCE_SCHEMA`].
pub const COMPARTMENT_VIEW: &str = "compartment";

/// Which tables a schema shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Views, `_rejects`, `_tombstones`, index tables.
    Analyst,
    /// Raw resource tables and `compartment`.
    Resources,
}

/// The catalog of one snapshot (or of an empty warehouse).
#[derive(Debug)]
pub struct SnapshotCatalog {
    schemas: RwLock<BTreeMap<String, Arc<dyn SchemaProvider>>>,
}

impl SnapshotCatalog {
    /// The catalog of `snapshot` of `warehouse` (`None`: nothing loaded).
    pub fn new(warehouse: &Warehouse, snapshot: Option<Arc<Snapshot>>) -> Result<Self, WarehouseError> {
        let snapshot = snapshot.unwrap_or_default();
        // A session of its own reads view schemas from file footers.
        let reader = new_session()?;
        let mut schemas: BTreeMap<String, Arc<dyn SchemaProvider>> = BTreeMap::new();
        for (name, side) in [(DEFAULT_SCHEMA, Side::Analyst), (RESOURCE_SCHEMA, Side::Resources)] {
            let schema = SnapshotSchema {
                warehouse: warehouse.clone(),
                snapshot: snapshot.clone(),
                side,
                reader: reader.clone(),
                overlay: MemorySchemaProvider::new(),
                resolved: Mutex::new(HashMap::new()),
            };
            schemas.insert(name.to_string(), Arc::new(schema));
        }
        Ok(Self {
            schemas: RwLock::new(schemas),
        })
    }
}

impl CatalogProvider for SnapshotCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.schemas
            .read()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.schemas.read().ok()?.get(name).cloned()
    }

    fn register_schema(&self, name: &str, schema: Arc<dyn SchemaProvider>) -> Result<Option<Arc<dyn SchemaProvider>>> {
        let mut schemas = self
            .schemas
            .write()
            .map_err(|_| DataFusionError::Internal("catalog lock poisoned".into()))?;
        Ok(schemas.insert(name.to_string(), schema))
    }
}

/// One schema of a snapshot.
struct SnapshotSchema {
    warehouse: Warehouse,
    snapshot: Arc<Snapshot>,
    side: Side,
    reader: SessionContext,
    /// Tables the session created.
    overlay: MemorySchemaProvider,
    /// Providers already built, by the name asked for.
    resolved: Mutex<HashMap<String, Arc<dyn TableProvider>>>,
}

impl std::fmt::Debug for SnapshotSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotSchema")
            .field("version", &self.snapshot.version)
            .field("side", &self.side)
            .finish()
    }
}

impl SnapshotSchema {
    /// The resource tables, by type name.
    fn resource_tables(&self) -> impl Iterator<Item = (&String, &TableEntry)> {
        self.snapshot
            .tables
            .iter()
            .filter(|(_, e)| e.kind == TableKind::Resource)
    }

    /// The files of every index table of `kind`.
    fn index_files(&self, kind: IndexKind) -> Vec<DataFile> {
        self.snapshot
            .tables
            .iter()
            .filter(|(key, _)| parse_index_table_key(key).is_some_and(|(k, _)| k == kind))
            .flat_map(|(_, entry)| entry.files.iter().cloned())
            .collect()
    }

    /// The snapshot's table names this schema shows.
    fn snapshot_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        match self.side {
            Side::Analyst => {
                for (key, entry) in &self.snapshot.tables {
                    match entry.kind {
                        TableKind::View => names.push(key.strip_prefix("views/").unwrap_or(key).to_string()),
                        TableKind::Rejects | TableKind::Tombstones => names.push(key.clone()),
                        _ => {}
                    }
                }
                for kind in IndexKind::ALL {
                    let present = self.snapshot.tables.iter().any(|(key, entry)| {
                        !entry.files.is_empty() && parse_index_table_key(key).is_some_and(|(k, _)| k == kind)
                    });
                    if present {
                        names.push(kind.sql_table());
                    }
                }
            }
            Side::Resources => {
                names.extend(self.resource_tables().map(|(name, _)| name.clone()));
                if !names.is_empty() {
                    names.push(COMPARTMENT_VIEW.to_string());
                }
            }
        }
        names
    }

    /// Builds the provider of `name`, if the snapshot has such a table.
    async fn build(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, WarehouseError> {
        let (warehouse, reader) = (&self.warehouse, &self.reader);
        let tables = &self.snapshot.tables;
        match self.side {
            Side::Analyst => {
                if let Some(entry) = tables
                    .get(&format!("views/{name}"))
                    .filter(|e| e.kind == TableKind::View)
                {
                    return Ok(Some(table_provider(warehouse, reader, name, entry).await?));
                }
                if let Some(entry) = tables
                    .get(name)
                    .filter(|e| matches!(e.kind, TableKind::Rejects | TableKind::Tombstones))
                {
                    return Ok(Some(table_provider(warehouse, reader, name, entry).await?));
                }
                let Some(kind) = IndexKind::ALL.into_iter().find(|k| k.sql_table() == name) else {
                    return Ok(None);
                };
                let files = self.index_files(kind);
                if files.is_empty() {
                    return Ok(None);
                }
                Ok(Some(
                    files_provider(warehouse, reader, Some(kind.schema()), &files).await?,
                ))
            }
            Side::Resources if name == COMPARTMENT_VIEW => self.compartment().await,
            Side::Resources => {
                let found = tables
                    .get_key_value(name)
                    .filter(|(_, e)| e.kind == TableKind::Resource);
                let found = found.or_else(|| self.resource_tables().find(|(key, _)| key.eq_ignore_ascii_case(name)));
                match found {
                    Some((key, entry)) => Ok(Some(table_provider(warehouse, reader, key, entry).await?)),
                    None => Ok(None),
                }
            }
        }
    }

    /// `compartment (resource_type, resource_id, patient_id)`: the
    /// `patients` lists of every resource table unnested. Derived, so it
    /// never disagrees with the tables.
    async fn compartment(&self) -> Result<Option<Arc<dyn TableProvider>>, WarehouseError> {
        let mut branches = Vec::new();
        let planner = new_session()?;
        for (name, entry) in self.resource_tables() {
            let provider = table_provider(&self.warehouse, &self.reader, name, entry).await?;
            planner.register_table(datafusion::common::TableReference::bare(name.as_str()), provider)?;
            branches.push(format!(
                "SELECT '{name}' AS resource_type, id AS resource_id, unnest(patients) AS patient_id FROM \"{name}\""
            ));
        }
        if branches.is_empty() {
            return Ok(None);
        }
        let sql = branches.join(" UNION ALL ");
        let plan = planner.sql(&sql).await?.into_unoptimized_plan();
        Ok(Some(Arc::new(ViewTable::new(plan, Some(sql)))))
    }
}

#[async_trait]
impl SchemaProvider for SnapshotSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.snapshot_names();
        names.extend(self.overlay.table_names());
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(table) = self.overlay.table(name).await? {
            return Ok(Some(table));
        }
        if let Some(table) = self.resolved.lock().ok().and_then(|r| r.get(name).cloned()) {
            return Ok(Some(table));
        }
        let Some(table) = self
            .build(name)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
        else {
            return Ok(None);
        };
        if let Ok(mut resolved) = self.resolved.lock() {
            resolved.insert(name.to_string(), table.clone());
        }
        Ok(Some(table))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.overlay.table_exist(name)
            || self
                .snapshot_names()
                .iter()
                .any(|n| n == name || (self.side == Side::Resources && n.eq_ignore_ascii_case(name)))
    }

    fn register_table(&self, name: String, table: Arc<dyn TableProvider>) -> Result<Option<Arc<dyn TableProvider>>> {
        self.overlay.register_table(name, table)
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        self.overlay.deregister_table(name)
    }
}
