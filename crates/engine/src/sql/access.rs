//! Which resource types each table of the analyst session holds (the rule
//! a login's [`ReadAccess`](crate::query::ReadAccess) is checked against):
//!
//! | table | holds |
//! |---|---|
//! | `fhir.<Type>` | that type |
//! | a view (`patient`, `condition`, …) | the type its ViewDefinition reads |
//! | `fhir.compartment`, `index_*`, `_rejects`, `_tombstones` | every type |
//! | `group_members`, `group_membership` | Group and Patient (rows: the login's own and granted Groups) |
//! | `information_schema.*`, `pg_catalog.*` | no resource data |
//! | `cohort(…)` (its inlined scans, schema `cohort_internal`) | checked by the function: the types its filters read, and Patient |

use datafusion::common::TableReference;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;

use crate::cohort::compile::INTERNAL_SCHEMA;
use crate::cohort::sql_function::COHORT_FUNCTION;
use crate::group::history::HISTORY_TABLE;
use crate::group::members_table::MEMBERS_TABLE;
use crate::query::{AccessDenied, ReadAccess, TableReads};
use crate::warehouse::catalog::RESOURCE_SCHEMA;
use crate::warehouse::snapshot_catalog::COMPARTMENT_VIEW;
use crate::warehouse::{Snapshot, TableKind};

/// Schemas holding no resource data.
const CATALOG_SCHEMAS: [&str; 2] = ["information_schema", "pg_catalog"];

/// What `table` (resolved against `default_schema`) holds in `snapshot`.
pub fn table_reads(snapshot: Option<&Snapshot>, table: &TableReference, default_schema: &str) -> TableReads {
    let schema = table.schema().unwrap_or(default_schema);
    let name = table.table();
    if CATALOG_SCHEMAS.contains(&schema) {
        return TableReads::Nothing;
    }
    if table.schema().is_none() && name == format!("{COHORT_FUNCTION}()") {
        return TableReads::Nothing;
    }
    // The scans of an inlined `cohort()` plan: the function checked the
    // types its filters read.
    if schema == INTERNAL_SCHEMA {
        return TableReads::Nothing;
    }
    let Some(snapshot) = snapshot else {
        return TableReads::AllTypes;
    };
    if schema == RESOURCE_SCHEMA {
        if name == COMPARTMENT_VIEW {
            return TableReads::AllTypes;
        }
        let resource = snapshot
            .tables
            .iter()
            .find(|(key, entry)| entry.kind == TableKind::Resource && key.eq_ignore_ascii_case(name));
        return match resource {
            Some((key, _)) => TableReads::Types(vec![key.clone()]),
            None => TableReads::AllTypes,
        };
    }
    if name == MEMBERS_TABLE || name == HISTORY_TABLE {
        return TableReads::Types(vec!["Group".into(), "Patient".into()]);
    }
    match snapshot.tables.get(&format!("views/{name}")) {
        Some(entry) if entry.kind == TableKind::View => match &entry.resource_type {
            Some(resource_type) => TableReads::Types(vec![resource_type.clone()]),
            None => TableReads::AllTypes,
        },
        _ => TableReads::AllTypes,
    }
}

/// The tables `plan` reads (subqueries included), each once, in order.
pub fn tables_read(plan: &LogicalPlan) -> Vec<TableReference> {
    let mut tables: Vec<TableReference> = Vec::new();
    let walked = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && !tables.contains(&scan.table_name)
        {
            tables.push(scan.table_name.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    // The closure never fails.
    debug_assert!(walked.is_ok());
    tables
}

/// Fails with the first table of `tables` `access` may not read.
pub fn check_tables(
    access: &ReadAccess,
    snapshot: Option<&Snapshot>,
    tables: &[TableReference],
    default_schema: &str,
) -> Result<(), AccessDenied> {
    for table in tables {
        let reads = table_reads(snapshot, table, default_schema);
        if !access.allows_table(&reads) {
            return Err(AccessDenied::table(&table.to_string(), &reads));
        }
    }
    Ok(())
}
