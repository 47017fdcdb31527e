//! [`ManifestTable`]: a DataFusion table over warehouse files the manifest
//! already lists.
//!
//! DataFusion's `ListingTable` asks the object store about every file at
//! every scan (a `HEAD` request per file on S3, a `stat` locally) and
//! recomputes per-file statistics from the footers. The manifest already
//! knows each file's key, size and row count, and files never change once
//! written, so this provider builds the Parquet scan straight from it. The
//! scan itself (pruning, filter pushdown, the shared footer cache) is
//! DataFusion's own `ParquetFormat` plan, as with `ListingTable`.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::{ColumnStatistics, Statistics};
use datafusion::datasource::create_ordering;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder};
use datafusion::datasource::table_schema::TableSchema;
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, SortExpr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use object_store::ObjectMeta;
use object_store::path::Path;

/// A table over a fixed list of Parquet files of one object store.
#[derive(Debug)]
pub struct ManifestTable {
    schema: SchemaRef,
    store_url: ObjectStoreUrl,
    files: Vec<PartitionedFile>,
    /// Each file is sorted by these (ascending); empty when unsorted.
    sort_order: Vec<SortExpr>,
    /// Estimates for the planner.
    statistics: Statistics,
    format: Arc<ParquetFormat>,
}

impl ManifestTable {
    /// A table of `files` (object store keys, sizes in bytes and row counts)
    /// in the store at `store_url`, each file sorted by `sort_order`.
    pub fn new(
        schema: SchemaRef,
        store_url: ObjectStoreUrl,
        files: impl IntoIterator<Item = (Path, u64, u64)>,
        sort_order: Vec<SortExpr>,
    ) -> Self {
        let mut total_rows = 0u64;
        let mut total_bytes = 0u64;
        let files = files
            .into_iter()
            .map(|(location, bytes, rows)| {
                total_rows += rows;
                total_bytes += bytes;
                // The key as is: a key made from a string would be
                // percent-encoded again (`zoë` → `zo%C3%AB`).
                PartitionedFile::new_from_meta(ObjectMeta {
                    location,
                    // Files never change once written; the footer cache
                    // checks entries against size and this time.
                    last_modified: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
                    size: bytes,
                    e_tag: None,
                    version: None,
                })
            })
            .collect();
        // Row counts are the manifest's, given as estimates for planning;
        // column statistics come from the footers when the scan opens each
        // file (row group pruning).
        let statistics = Statistics {
            num_rows: Precision::Inexact(usize::try_from(total_rows).unwrap_or(usize::MAX)),
            total_byte_size: Precision::Inexact(usize::try_from(total_bytes).unwrap_or(usize::MAX)),
            column_statistics: vec![ColumnStatistics::new_unknown(); schema.fields().len()],
        };
        Self {
            schema,
            store_url,
            files,
            sort_order,
            statistics,
            format: Arc::new(ParquetFormat::default()),
        }
    }

    /// The file groups a scan reads, one per partition: each sorted file
    /// alone (so its order survives; the one caller, the index merge, wants
    /// exactly that), otherwise split into `target_partitions` groups of
    /// about as many files each.
    fn file_groups(&self, target_partitions: usize) -> Vec<FileGroup> {
        if self.sort_order.is_empty() {
            FileGroup::new(self.files.clone()).split_files(target_partitions.max(1))
        } else {
            self.files.iter().map(|f| FileGroup::new(vec![f.clone()])).collect()
        }
    }
}

#[async_trait]
impl TableProvider for ManifestTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if self.files.is_empty() {
            let schema = match projection {
                Some(columns) => Arc::new(self.schema.project(columns)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        let ordering = if self.sort_order.is_empty() {
            Vec::new()
        } else {
            create_ordering(&self.schema, std::slice::from_ref(&self.sort_order))?
        };
        let source = self.format.file_source(TableSchema::from(self.schema.clone()));
        // Filters are pushed into the scan by the physical optimizer (and
        // stay above it as well: the provider reports them as inexact).
        let config = FileScanConfigBuilder::new(self.store_url.clone(), source)
            .with_file_groups(self.file_groups(state.config().target_partitions()))
            .with_statistics(self.statistics.clone())
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .with_output_ordering(ordering)
            .build();
        self.format.create_physical_plan(state, config).await
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_plan::{ExecutionPlanProperties, collect, displayable};

    use crate::warehouse::catalog::{files_provider, files_provider_sorted, new_session};
    use crate::warehouse::parquet_file::write_test_file;
    use crate::warehouse::{DataFile, Warehouse};

    /// Writes `rows` of (id, n) to `relative` under `dir`.
    fn write(dir: &std::path::Path, relative: &str, rows: &[(&str, i64)]) -> DataFile {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .expect("batch");
        write_test_file(dir, relative, &batch)
    }

    #[tokio::test]
    async fn scans_the_listed_files_only_with_their_order_and_schema() {
        let temp = tempfile::tempdir().expect("tempdir");
        // Characters a store path would percent-encode if re-parsed from text.
        let dir = temp.path().join("wh zoë~[1]");
        let warehouse = Warehouse::open(dir.to_str().expect("utf-8")).expect("warehouse");
        let dir = dir.as_path();
        let files = vec![
            write(dir, "tables/t/a.parquet", &[("a", 1), ("c", 3)]),
            write(dir, "tables/t/b.parquet", &[("b", 2), ("d", 4)]),
        ];
        // A file in the same folder that the manifest does not list is not read.
        write(dir, "tables/t/stray.parquet", &[("x", 9)]);
        let ctx = new_session().expect("session");

        // Schema from the first file's footer; a filter pushed into the scan.
        let table = files_provider(&warehouse, &ctx, None, &files).await.expect("provider");
        assert_eq!(table.schema().field(1).name(), "n");
        let frame = ctx
            .read_table(table)
            .expect("read")
            .filter(datafusion::prelude::col("n").gt_eq(datafusion::prelude::lit(2)))
            .expect("filter");
        let batches = frame.collect().await.expect("collect");
        let mut ids: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                // Strings may come back as views: compare their text.
                let ids = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8).expect("cast");
                let ids = ids.as_any().downcast_ref::<StringArray>().expect("ids");
                (0..ids.len()).map(|i| ids.value(i).to_string()).collect::<Vec<_>>()
            })
            .collect();
        ids.sort();
        assert_eq!(ids, ["b", "c", "d"]);

        // Sorted files: one partition per file, each keeping its order.
        let schema = files_provider(&warehouse, &ctx, None, &files)
            .await
            .expect("provider")
            .schema();
        let sorted = files_provider_sorted(&warehouse, &ctx, schema, &files, &["id".to_string()])
            .await
            .expect("provider");
        let plan = ctx
            .read_table(sorted)
            .expect("read")
            .create_physical_plan()
            .await
            .expect("plan");
        assert_eq!(
            plan.output_partitioning().partition_count(),
            2,
            "{}",
            displayable(plan.as_ref()).indent(true)
        );
        assert!(plan.output_ordering().is_some());
        let rows: usize = collect(plan, ctx.task_ctx())
            .await
            .expect("run")
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows, 4);
    }
}
