//! When a criteria Group's membership is computed: its membership mode,
//! named on the Group by the [`MEMBERSHIP_MODE_URL`] extension (a server
//! default when absent, written onto the stored Group so a later default
//! does not change it).

use serde_json::{Value, json};

/// The extension naming a criteria Group's membership mode (`valueCode`).
pub const MEMBERSHIP_MODE_URL: &str = "https://fhirlake.dev/fhir/StructureDefinition/membership-mode";

/// When a criteria Group's membership is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MembershipMode {
    /// At creation and at each explicit update only (`members-refreshed`
    /// is the time of that computation).
    #[default]
    Snapshot,
    /// Also after each load that commits a new warehouse version
    /// (`members-refreshed` is the last refresh that changed it).
    Refreshed,
    /// At each use: an export's kick-off, `$members`, use as a base
    /// population (no `members-refreshed`).
    OnDemand,
}

impl MembershipMode {
    /// Every mode's code, for messages.
    pub const CODES: [&'static str; 3] = ["snapshot", "refreshed", "on-demand"];

    /// The mode of `code`.
    pub fn parse(code: &str) -> Option<Self> {
        match code {
            "snapshot" => Some(Self::Snapshot),
            "refreshed" => Some(Self::Refreshed),
            "on-demand" => Some(Self::OnDemand),
            _ => None,
        }
    }

    /// The mode's code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Snapshot => "snapshot",
            Self::Refreshed => "refreshed",
            Self::OnDemand => "on-demand",
        }
    }

    /// The mode the Group resource `group` names: `Ok(None)` when it names
    /// none, `Err` with the problem when its extension is not one code of
    /// [`MembershipMode::CODES`].
    pub fn of_group(group: &Value) -> Result<Option<Self>, String> {
        let named: Vec<&Value> = group
            .get("extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|e| e.get("url").and_then(Value::as_str) == Some(MEMBERSHIP_MODE_URL))
            .collect();
        match named.as_slice() {
            [] => Ok(None),
            [extension] => {
                let code = extension.get("valueCode").and_then(Value::as_str);
                code.and_then(Self::parse).map(Some).ok_or_else(|| {
                    format!(
                        "the membership-mode extension ({MEMBERSHIP_MODE_URL}) takes a valueCode: one of {}",
                        Self::CODES.join(", ")
                    )
                })
            }
            _ => Err("the membership-mode extension is given more than once".into()),
        }
    }

    /// Writes the mode onto Group resource `group` (replacing any).
    pub fn set_on(self, group: &mut Value) {
        let Some(object) = group.as_object_mut() else {
            return;
        };
        let mut extensions: Vec<Value> = object
            .get("extension")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter(|e| e.get("url").and_then(Value::as_str) != Some(MEMBERSHIP_MODE_URL))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        extensions.push(json!({"url": MEMBERSHIP_MODE_URL, "valueCode": self.code()}));
        object.insert("extension".into(), Value::Array(extensions));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_the_extension() {
        let mut group = json!({"resourceType": "Group"});
        assert_eq!(MembershipMode::of_group(&group), Ok(None));
        MembershipMode::OnDemand.set_on(&mut group);
        MembershipMode::Refreshed.set_on(&mut group);
        assert_eq!(MembershipMode::of_group(&group), Ok(Some(MembershipMode::Refreshed)));
        assert_eq!(group["extension"].as_array().map(Vec::len), Some(1));
        let wrong = json!({"extension": [{"url": MEMBERSHIP_MODE_URL, "valueCode": "daily"}]});
        assert!(MembershipMode::of_group(&wrong).is_err_and(|e| e.contains("on-demand")));
    }
}
