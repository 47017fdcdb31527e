//! A SQL-on-FHIR ViewDefinition over one resource, without a warehouse:
//! the rows the view gives, as an Arrow table.
//!
//! `cargo run --example view_one_resource`

use fhirlake::json::parse;
use fhirlake::view::{ViewDefinition, ViewRunner, rows_to_batch, view_schema};

const VIEW: &str = r#"{
  "resourceType": "ViewDefinition",
  "resource": "Patient",
  "status": "active",
  "select": [
    {"column": [
      {"name": "id", "path": "getResourceKey()"},
      {"name": "gender", "path": "gender"},
      {"name": "birth_date", "path": "birthDate", "type": "date"}
    ]},
    {"forEach": "name", "column": [
      {"name": "family", "path": "family"},
      {"name": "given", "path": "given.join(' ')"}
    ]}
  ]
}"#;

const PATIENT: &str = r#"{
  "resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-03-01",
  "name": [{"family": "Rivera", "given": ["Ana", "Maria"]}, {"family": "Lopez", "given": ["Ana"]}]
}"#;

fn main() -> anyhow::Result<()> {
    let view = ViewDefinition::from_json(&serde_json::from_str(VIEW)?)?;
    let runner = ViewRunner::new(&view)?;
    let resource = parse(PATIENT)?;
    // One row per name (`forEach`), the Patient's own columns on each.
    let rows = runner.rows(&resource)?;
    let batch = rows_to_batch(&view_schema(&view), &rows)?;
    println!("{}", datafusion::arrow::util::pretty::pretty_format_batches(&[batch])?);
    Ok(())
}
