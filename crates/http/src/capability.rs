//! `GET /metadata`: a CapabilityStatement that says what this server does.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::SharedState;
use super::outcome::fhir_json;
use fhirlake_engine::export::CONTEXT_TYPES;
use fhirlake_engine::fhir::PatientCompartment;
use fhirlake_engine::group::{COHORT_PROFILE, FHIR_QUERY, MEMBERSHIP_MODE_URL};
use fhirlake_engine::search::SearchRegistry;
use fhirlake_engine::warehouse::TableKind;

fn param_type_name(t: fhirlake_engine::search::ParamType) -> &'static str {
    use fhirlake_engine::search::ParamType::*;
    match t {
        Token => "token",
        Date => "date",
        String => "string",
        Reference => "reference",
        Quantity => "quantity",
        Number => "number",
        Uri => "uri",
        Composite => "composite",
        Special => "special",
    }
}

/// The searchParam list of `resource_type`: what `member-filter` accepts.
fn search_params(registry: &SearchRegistry, resource_type: &str) -> Vec<Value> {
    registry
        .supported(resource_type)
        .into_iter()
        .filter(|p| fhirlake_engine::cohort::compile::is_compilable(p, resource_type))
        .map(|p| {
            json!({
                "name": p.code,
                "definition": p.url,
                "type": param_type_name(p.param_type),
            })
        })
        .collect()
}

/// What `$export` does, for the CapabilityStatement (the spec asks servers
/// to document these choices).
const EXPORT_DOCUMENTATION: &str = "Bulk Cohort API (async Group creation) and Bulk Data $export at system, Patient and Group level (GET, or POST with a Parameters body; Prefer: respond-async assumed). \
Parameters: _outputFormat (application/fhir+ndjson, application/ndjson, ndjson; Parquet as application/vnd.apache.parquet or parquet: one row per resource with id, version_id, last_updated and the resource JSON), _since, _until, _type, _typeFilter (the member-filter search compiler; several filters of one type are ORed; an invalid filter is always an error, never ignored), _elements (top-level; mandatory elements kept; tagged SUBSETTED), patient (POST; must be members of the Group, or loaded Patients), includeAssociatedData (LatestProvenanceResources, RelevantProvenanceResources: Provenance is exported even when _type omits it; at Patient and Group level the Provenance exported is every Provenance whose target is an exported resource, a superset of the latest one per resource), organizeOutputBy=Patient (NDJSON files of blocks: a Parameters header naming the Patient, the Patient, then its compartment's resources; blocks are never split, so a file may exceed the size limit by one block; context resources are not added), newMemberData (Group level; fhirlake's): with _since, 'all' gives a member who joined the Group after _since all of their data, continuing members what changed since _since, and members who left nothing; 'since' (the default) is the plain _since reading (new members' older data is not sent: the IG's new-member recipe applies). Groups created through this server only (they keep membership history). allowPartialManifests=true (while the export runs, a poll returns 202 with a manifest page of the files finished so far; pages never change except by gaining a link to the next page; the last page comes with 200 and carries error[] and deleted[]). Unsupported parameters are 400 unless Prefer: handling=lenient, which lists them in error[]. \
Content: Patient and Group exports contain the Patient compartments (Patient resources included) plus the Practitioner, PractitionerRole, Organization, Location and Medication resources the exported resources reference (so references resolve). Latest versions only. _since/_until compare meta.lastUpdated, or the load time for resources without it, and _since also returns everything loads committed after it (so nothing committed after a transactionTime is missed); a Group export with _since does not add older data of patients who joined the Group since (request those with patient=). With _since, deleted[] lists the resources of the export's scope that loads deleted since then (a load deletes with the Bulk Data deleted format: transaction Bundles of DELETE entries), as transaction Bundles of DELETE entries; a resource loaded again after its deletion is in output, never in deleted. \
Files: one type per file, split at the configured size, count per file, downloadable with gzip (Accept-Encoding) and byte ranges; requiresAccessToken is true when authorization is on and files are streamed by the server, false for presigned download URLs or an open server. Completed exports expire after the configured retention (Expires header); DELETE on the status URL cancels and purges.";

/// The `rest.security` element: SMART Backend Services when authorization
/// is on (token endpoint in the `oauth-uris` extension), else a statement
/// that the server runs open.
fn security(state: &super::AppState) -> serde_json::Value {
    match &state.auth {
        Some(issuer) => json!({
            "cors": false,
            "service": [{
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}],
                "text": "SMART Backend Services: client_credentials with a private_key_jwt assertion (RS384 or ES384)"
            }],
            "extension": [{
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [{"url": "token", "valueUri": issuer.token_url()}]
            }],
            "description": format!("Every request but /metadata and /.well-known/smart-configuration needs a bearer token from the token endpoint (lifetime {} s). Scopes: SMART v2 (system/*.rs, system/Group.cud, system/Patient.rs …) and v1 (system/*.read, system/Group.write). Exports are limited to the types the scopes allow to read; member-filters and _typeFilter need read access to every type they search, and may not search Groups; a client sees and exports only the cohort Groups it created and the Groups granted to it (granted ones read-only); export status URLs and files belong to the client that started the export (requiresAccessToken: true unless downloads are presigned).", issuer.lifetime().as_secs())
        }),
        None => json!({
            "cors": false,
            "description": "This server runs without authorization (no access token is needed)."
        }),
    }
}

/// The Group operations: `$export`, and the member operations unless
/// Groups are read-only.
fn group_operations(base_url: &str, read_only: bool) -> Value {
    let mut operations = vec![
        json!({
            "name": "export",
            "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
            "documentation": "Group/[id]/$export: the Patient compartments of the members (cohort or loaded Group)."
        }),
        json!({
            "name": "members",
            "definition": format!("{base_url}/OperationDefinition/group-members"),
            "documentation": "Group/[id]/$members (GET): the member Patients that count now, as a searchset Bundle paged by _count (at most 1000) and _offset. fhirlake's own operation (not the IG's); its definition is served at the URL given."
        }),
    ];
    if !read_only {
        let members = "Parameters naming one member (patientReference, or memberId: a Patient.identifier, \
            Coverage.subscriberId or Coverage.identifier, resolved to Coverage.beneficiary; optional attributionPeriod) \
            or several (repeated member parameters with those parts); all applied or none (unknown and ambiguous \
            members are listed in a 400). Member-based Groups only; honours If-Match and Prefer: respond-async.";
        operations.push(json!({
            "name": "member-add",
            "definition": "http://hl7.org/fhir/us/davinci-atr/OperationDefinition/member-add",
            "documentation": format!("Group/[id]/$member-add: {members} Idempotent; a different attributionPeriod replaces the member's entry."),
        }));
        operations.push(json!({
            "name": "member-remove",
            "definition": "http://hl7.org/fhir/us/davinci-atr/OperationDefinition/member-remove",
            "documentation": format!("Group/[id]/$member-remove: {members} Without attributionPeriod the entry is removed (kept in the membership history); with one, the member stays listed and its period ends then. Removing a non-member is a 400."),
        }));
    }
    Value::Array(operations)
}

/// `GET /OperationDefinition/group-members`: the definition of `$members`.
pub async fn members_definition(State(state): State<SharedState>) -> Response {
    let definition = json!({
        "resourceType": "OperationDefinition",
        "id": "group-members",
        "url": format!("{}/OperationDefinition/group-members", state.base_url),
        "name": "GroupMembers",
        "title": "The member Patients of a Group",
        "status": "active",
        "kind": "operation",
        "code": "members",
        "description": "The Patients that are members of the Group now (a cohort's computed members; a member-based Group's or roster's entries that are not inactive and within their period), as a searchset Bundle of Patient resources in id order. A member whose Patient resource is not loaded is listed as a Patient with only its id.",
        "resource": ["Group"],
        "system": false,
        "type": false,
        "instance": true,
        "affectsState": false,
        "parameter": [
            {"name": "_count", "use": "in", "min": 0, "max": "1", "type": "integer", "documentation": "Page size (default 100, at most 1000)."},
            {"name": "_offset", "use": "in", "min": 0, "max": "1", "type": "integer", "documentation": "Members to skip."},
            {"name": "_at", "use": "in", "min": 0, "max": "1", "type": "instant", "documentation": "The members as of this instant: the Group version current then, its entries that counted then (Groups created through this server; an instant before the Group existed is a 400)."},
            {"name": "_since", "use": "in", "min": 0, "max": "1", "type": "instant", "documentation": "Instead of the members: the membership changes after this instant, oldest first, one entry per change, the Patient with search.extension https://fhirlake.dev/fhir/StructureDefinition/membership-change (action: joined | changed | left; at: when; version: the Group version). A Group's meta.lastUpdated is a valid value (the changes it already showed are not repeated)."},
            {"name": "return", "use": "out", "min": 1, "max": "1", "type": "Bundle", "documentation": "A searchset Bundle with total and next/previous links."}
        ]
    });
    fhir_json(StatusCode::OK, &definition)
}

/// Adds an entry for every loaded resource type `resources` lacks: a
/// system export returns those too.
async fn add_loaded_types(state: &super::AppState, resources: &mut Vec<Value>) {
    if let Ok(Some(snapshot)) = state.service.warehouse.current().await {
        let loaded = snapshot.tables.iter().filter(|(_, e)| e.kind == TableKind::Resource);
        for (resource_type, _) in loaded {
            if !resources.iter().any(|r| r["type"] == resource_type.as_str()) {
                let documentation = if CONTEXT_TYPES.contains(&resource_type.as_str()) {
                    "Loaded data in no Patient compartment: returned by system-level $export, and by Patient- and Group-level $export when an exported resource references it."
                } else {
                    "Loaded data in no Patient compartment: returned by system-level $export."
                };
                resources.push(json!({"type": resource_type, "documentation": documentation}));
            }
        }
    }
}

/// The CapabilityStatement's account of when Group membership is computed
/// and whether changes wait for an operator: (refresh, approval).
fn group_policies(state: &super::AppState) -> (String, &'static str) {
    let approval = match state.service.options.group_approval {
        fhirlake_engine::jobs::approval::ApprovalMode::Manual => {
            "Every Group change (create, update, PATCH, $member-add, $member-remove) waits for an operator's approval: \
             send it with Prefer: respond-async; its poll answers 202 (X-Progress: awaiting approval) until approved, \
             and a rejection is answered with the operator's reason (403). Synchronous changes are refused (400)."
        }
        fhirlake_engine::jobs::approval::ApprovalMode::Auto => "Group changes apply without an operator's approval.",
    };
    let options = &state.service.options;
    let spacing = if options.refresh_spacing.is_zero() {
        "after every load".to_string()
    } else {
        format!(
            "after a load, at most once every {} s",
            options.refresh_spacing.as_secs()
        )
    };
    let refresh = format!(
        "When membership is computed: a criteria Group's membership-mode extension ({MEMBERSHIP_MODE_URL}, valueCode; \
         default on this server: {default}; written onto the stored Group) decides. snapshot: at creation and at each \
         update (PUT, PATCH); members-refreshed is the time of that computation. refreshed: also {spacing} (the server \
         notices every committed warehouse version, loads by other processes included); a new version is written, and \
         members-refreshed set, only when the membership changed; a failed refresh keeps the last membership and is \
         recorded in the Group's refresh log. on-demand: at each export kick-off (the export runs on the version that \
         computation wrote), each $members call and each use as another Group's base population; no members-refreshed. \
         A refresh recomputes only the patients the loads since touched when every member-filter stays in the patient's \
         own compartment, else every patient. A deleted Patient leaves every criteria Group. Membership history \
         ($members?_since, $members?_at) is kept for {history} s (--group-history-retention). Member-based Groups are never recomputed.",
        default = options.default_membership.code(),
        history = state.service.groups.history_retention.as_secs(),
    );
    (refresh, approval)
}

/// `GET /metadata`.
pub async fn metadata(State(state): State<SharedState>) -> Response {
    let (refresh, approval) = group_policies(&state);
    let mut resources = vec![json!({
        "type": "Group",
        "profile": "http://hl7.org/fhir/StructureDefinition/Group",
        "supportedProfile": [COHORT_PROFILE],
        "documentation": format!("Bulk Cohort API: POST a bulk-cohort-group Group with Prefer: respond-async (or synchronously) and poll the Content-Location URL. member-filter expressions use {FHIR_QUERY} with the search parameters listed for each resource type below; several member-filters are ANDed; member entries (Patients, Groups) set the base population; member-filters on types in no Patient compartment are refused. A Group without member-filter (and without the bulk-cohort-group profile) is member-based: its member entries are its members (existing Patients only, checked before the 202: unknown ones are a 400 naming them, or with Prefer: handling=lenient are left out, listed as warnings in the batch-response entry's outcome (async) or, synchronously, in the body with Prefer: return=OperationOutcome), kept with their period and inactive, replaced by PUT, changed by PATCH (JSON Patch as application/json-patch+json; FHIRPath Patch as a Parameters, with paths of the form Type.element, [n], .where(a.b = 'value'), .first(), .last()) or by $member-add and $member-remove, never recomputed; a read lists the first 1000 member entries (meta.tag SUBSETTED when there are more; quantity counts the members that count now). PUT and DELETE honour If-Match (W/\"version\"; stale: 412); deleting a Group another Group uses as its base population is a 409. Every version stays readable (_history/[v], listed by _history) for --group-history-retention after it is superseded, and while an unexpired export names it; a Group export runs against the version current at kick-off (named in the manifest's extension). {refresh} {approval} GET /Group/[id]/$members pages through the members (Patient resources). Groups in the loaded data are read-only; a roster member counts only while not inactive and within its period (at an export's transactionTime)."),
        "operation": group_operations(&state.base_url, state.read_only_groups),
        "interaction": if state.read_only_groups {
            json!([{"code": "read"}, {"code": "vread"}, {"code": "history-instance"}, {"code": "search-type"}])
        } else {
            json!([
                {"code": "create"}, {"code": "read"}, {"code": "vread"}, {"code": "history-instance"}, {"code": "update"},
                {"code": "patch"},
                {"code": "delete"}, {"code": "search-type"}
            ])
        },
        "versioning": "versioned",
        "updateCreate": false,
        "searchParam": [
            {"name": "name", "type": "string", "documentation": "case- and accent-insensitive prefix; :exact, :contains"},
            {"name": "_id", "type": "token"},
            {"name": "_lastUpdated", "type": "date"},
            {"name": "actual", "type": "token"},
            {"name": "characteristic", "type": "token"},
            {"name": "characteristic-value", "type": "composite"},
            {"name": "code", "type": "token"},
            {"name": "exclude", "type": "token"},
            {"name": "identifier", "type": "token"},
            {"name": "managing-entity", "type": "reference"},
            {"name": "member", "type": "reference", "documentation": "a member entry, or (stored Groups) a Patient who is a member now"},
            {"name": "type", "type": "token"},
            {"name": "value", "type": "token"},
            {"name": "_count", "type": "number"},
            {"name": "_offset", "type": "number", "documentation": "unknown parameters are ignored and reported in an OperationOutcome entry; Prefer: handling=strict makes them a 400"}
        ],
    })];
    if let (Ok(registry), Ok(compartment)) = (SearchRegistry::r4(), PatientCompartment::r4()) {
        let mut types: Vec<&str> = compartment.types().collect();
        types.push("Patient");
        types.sort_unstable();
        types.dedup();
        for resource_type in types.into_iter().filter(|t| *t != "Group") {
            let mut entry = json!({
                "type": resource_type,
                "documentation": "Searchable in member-filter and _typeFilter expressions with these parameters (plus chains and _has).",
                "searchParam": search_params(registry, resource_type),
            });
            if matches!(resource_type, "Patient" | "Coverage") {
                entry["interaction"] = json!([{"code": "read"}, {"code": "search-type"}]);
                entry["documentation"] = json!(
                    "Readable, and searchable with these parameters (ANDed; _count, _offset paging) to find Group members; \
                     also usable in member-filter and _typeFilter expressions (plus chains and _has)."
                );
            }
            if resource_type == "Patient" {
                entry["operation"] = json!([{
                    "name": "export",
                    "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
                    "documentation": "Patient/$export: the Patient compartments of all patients."
                }, {
                    "name": "match",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match",
                    "documentation": "Patient/$match (POST): an identifier match is certain (score 1); otherwise candidates found through the search index by family name or birth date are scored (family 0.3, given 0.2, birth date 0.3, gender 0.1, postal code 0.1): certain at 0.9 with family, given and birth date agreeing, probable at 0.7, possible at 0.5. onlyCertainMatches, count (default 10, at most 100)."
                }]);
            }
            resources.push(entry);
        }
    }
    add_loaded_types(&state, &mut resources).await;
    let statement = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": fhirlake_engine::state::now(),
        "kind": "instance",
        "name": "fhirlake",
        "title": "fhirlake Bulk Cohort server",
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "software": {"name": "fhirlake", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "fhirlake over a columnar FHIR warehouse", "url": state.base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/json"],
        "rest": [{
            "mode": "server",
            "security": security(&state),
            "documentation": EXPORT_DOCUMENTATION,
            "resource": resources,
            "operation": [{
                "name": "export",
                "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
                "documentation": "System-level $export (GET or POST)."
            }, {
                "name": "viewdefinition-run",
                "definition": "http://sql-on-fhir.org/OperationDefinition/$viewdefinition-run",
                "documentation": "SQL-on-FHIR $viewdefinition-run (POST, also at /ViewDefinition/$viewdefinition-run): viewResource (inline ViewDefinition) over the resources given as resource parameters, or else the warehouse's resources of the view's type (streamed); _format json (default), ndjson, csv (header, default true) or parquet, in the Parameters or the query; _limit. viewReference, patient, group and _since are not supported yet (400). Needs read access to the view's resource type."
            }],
        }],
    });
    fhir_json(StatusCode::OK, &statement)
}
