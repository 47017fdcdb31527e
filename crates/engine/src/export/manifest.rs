//! The completion manifest (Bulk Data STU3 shape, read by STU4 clients too).

use serde_json::{Value, json};

use super::run::ExportOutput;
use super::sink::ExportedFile;

/// The manifest of a finished export. `url_of` turns a file name into the
/// absolute URL a client downloads it from.
pub fn manifest(
    transaction_time: &str,
    request_url: &str,
    requires_access_token: bool,
    output: &ExportOutput,
    organized_by: Option<&str>,
    url_of: impl Fn(&str) -> String,
) -> Value {
    let entries = |files: &[ExportedFile]| -> Vec<Value> {
        files
            .iter()
            .map(|f| {
                let mut entry = json!({"url": url_of(&f.name), "count": f.count});
                if let Some(t) = &f.resource_type
                    && organized_by.is_none()
                {
                    entry["type"] = json!(t);
                }
                entry
            })
            .collect()
    };
    let mut manifest = json!({
        "transactionTime": transaction_time,
        "request": request_url,
        "requiresAccessToken": requires_access_token,
        "output": entries(&output.output),
        "deleted": entries(&output.deleted),
        "error": entries(&output.error),
    });
    if let Some(by) = organized_by {
        manifest["outputOrganizedBy"] = json!(by);
    }
    manifest
}
