//! The `_tombstones` rows of a load: resources its deletion Bundles
//! deleted, kept so `$export` with `_since` can report them.

use std::sync::Arc;

use tokio::runtime::Handle;

use super::IngestError;
use crate::warehouse::merge::Deletions;
use crate::warehouse::{DataFile, TOMBSTONES_TABLE, Warehouse, WarehouseError};

/// Tombstone rows gathered by a load, written as one file of `_tombstones`.
#[derive(Default)]
pub(super) struct TombstoneRows {
    types: Vec<String>,
    ids: Vec<String>,
    seqs: Vec<i64>,
    patients: Vec<Vec<String>>,
}

impl TombstoneRows {
    pub(super) fn add(
        &mut self,
        resource_type: &str,
        deleted: &Deletions<'_>,
        patients: &std::collections::HashMap<String, Vec<String>>,
    ) {
        for (id, seq) in deleted.ids {
            self.types.push(resource_type.to_string());
            self.ids.push(id.clone());
            self.seqs.push(*seq);
            self.patients.push(patients.get(id).cloned().unwrap_or_default());
        }
    }

    pub(super) fn has_type(&self, resource_type: &str) -> bool {
        self.types.iter().any(|t| t == resource_type)
    }

    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub(super) async fn write(
        self,
        warehouse: &Warehouse,
        token: &str,
        loaded_at: i64,
    ) -> Result<DataFile, IngestError> {
        use datafusion::arrow::array::{
            ArrayRef, Int64Array, ListBuilder, StringArray, StringBuilder, TimestampMicrosecondArray,
        };
        let rows = self.ids.len();
        let mut patients = ListBuilder::new(StringBuilder::new());
        for list in &self.patients {
            for p in list {
                patients.values().append_value(p);
            }
            patients.append(true);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(self.types)),
            Arc::new(StringArray::from(self.ids)),
            Arc::new(TimestampMicrosecondArray::from(vec![loaded_at; rows]).with_timezone("UTC")),
            Arc::new(Int64Array::from(self.seqs)),
            Arc::new(patients.finish()),
        ];
        let schema = crate::warehouse::schema::tombstones_schema();
        let batch = datafusion::arrow::record_batch::RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| IngestError::Warehouse(WarehouseError::DataFusion(e.into())))?;
        let root = warehouse.root().clone();
        let path = format!("tables/{TOMBSTONES_TABLE}/{token}-0.parquet");
        let handle = Handle::current();
        let file = tokio::task::spawn_blocking(move || -> Result<DataFile, WarehouseError> {
            let mut writer = crate::warehouse::parquet_file::ParquetFileWriter::create(&root, path, schema, handle)?;
            writer.write(&batch)?;
            Ok(writer.finish()?)
        })
        .await??;
        Ok(file)
    }
}
