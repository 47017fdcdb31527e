//! The cohort engine: the README example filters with their independently
//! computed patient counts, and search semantics per parameter type,
//! modifier and prefix on a small hand-made dataset.

use std::path::Path;

use fhirlake::cohort::{CohortEngine, CohortError};
use fhirlake::group::{GroupError, GroupResolver};
use fhirlake::warehouse::Warehouse;

use crate::common::{fhirlake, load_into, query_i64, sample_data, shared_dataset};

/// (id, filters, synthea-10, synthea-100, synthea-615), from
/// ../shared/spec/fhir-r4/README.md ("Example filters with expected patient counts").
pub(crate) const EXAMPLES: &[(&str, &[&str], usize, usize, usize)] = &[
    ("P1", &["Patient?gender=female"], 4, 40, 284),
    (
        "P2",
        &["Patient?birthdate=ge1950-01-01&birthdate=lt1970-01-01"],
        5,
        31,
        152,
    ),
    ("P4", &["Patient?address-state=MA"], 10, 100, 615),
    ("P5", &["Patient?address-state:exact=Massachusetts"], 10, 100, 615),
    ("P9", &["Patient?deceased=true"], 0, 0, 124),
    ("C1", &["Condition?code=http://snomed.info/sct|15777000"], 2, 26, 193),
    ("C2", &["Condition?code=http://snomed.info/sct|44054006"], 0, 1, 37),
    (
        "C3",
        &["Condition?code=http://snomed.info/sct|59621000,http://snomed.info/sct|38341003"],
        3,
        23,
        161,
    ),
    ("C5", &["Condition?code=15777000&onset-date=ge2010-01-01"], 1, 9, 39),
    ("E1", &["Encounter?class=EMER"], 9, 71, 426),
    ("E3", &["Encounter?date=ge2019-01-01&date=lt2020-01-01"], 10, 92, 442),
    (
        "E6",
        &["Encounter?service-provider=Organization/8ad64ecf-c817-3753-bee7-006a8e662e06"],
        2,
        3,
        14,
    ),
    (
        "E7",
        &["Encounter?practitioner=Practitioner/f5741899-c09e-3021-b936-435a3b478f4a"],
        2,
        3,
        0,
    ),
    (
        "O1",
        &["Observation?code=http://loinc.org|4548-4&value-quantity=gt6.5"],
        0,
        0,
        18,
    ),
    (
        "O3",
        &["Observation?code=http://loinc.org|39156-5&value-quantity=ge30"],
        4,
        26,
        198,
    ),
    (
        "O5",
        &[
            "Observation?code=http://loinc.org|72166-2&value-concept=http://snomed.info/sct|449868002,http://snomed.info/sct|8517006",
        ],
        0,
        21,
        158,
    ),
    (
        "M3",
        &["MedicationRequest?authoredon=ge2018-01-01&status=active"],
        6,
        52,
        161,
    ),
    (
        "R2",
        &["Procedure?code=http://snomed.info/sct|73761001&date=ge2015-01-01"],
        4,
        27,
        139,
    ),
    (
        "I1",
        &["Immunization?vaccine-code=http://hl7.org/fhir/sid/cvx|140&date=ge2019-01-01&date=lt2020-01-01"],
        7,
        79,
        377,
    ),
    (
        "X1",
        &[
            "Patient?gender=female",
            "Condition?code=http://snomed.info/sct|15777000",
        ],
        1,
        13,
        88,
    ),
    (
        "X4",
        &["Patient?gender=male", "MedicationRequest?status=stopped"],
        6,
        57,
        279,
    ),
];

async fn check_examples(dataset: &Path, column: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = Warehouse::open(&dir.path().display().to_string()).expect("warehouse");
    load_into(&warehouse, &[dataset], false).await;
    let engine = CohortEngine::open(&warehouse).await.expect("engine");
    let mut wrong = Vec::new();
    for (id, filters, c10, c100, c615) in EXAMPLES {
        let expected = [*c10, *c100, *c615][column];
        let got = engine.evaluate(filters, None).await.expect(id).patients.len();
        if got != expected {
            wrong.push(format!("{id} {filters:?}: expected {expected}, got {got}"));
        }
    }
    if column == 2 {
        // A selective filter reads a small fraction of the row groups.
        let queries = CohortEngine::parse(&["Observation?code=http://loinc.org|4548-4"]).expect("parse");
        let plan = engine.plan(&queries, None).expect("plan");
        let explained = engine.explain(plan).await.expect("explain");
        let metric = explained
            .split("row_groups_pruned_statistics=")
            .nth(1)
            .expect("pruning metrics in EXPLAIN ANALYZE");
        let numbers: Vec<u64> = metric
            .split(|c: char| !c.is_ascii_digit())
            .filter(|t| !t.is_empty())
            .take(2)
            .map(|t| t.parse().expect("number"))
            .collect();
        let (total, matched) = (numbers[0], numbers[1]);
        println!("Observation?code=…|4548-4 reads {matched} of {total} row groups");
        assert!(
            total >= 6 && matched * 3 <= total,
            "{matched} of {total} row groups read"
        );
    }
    println!(
        "cohort examples on {}: {} of {} match",
        dataset.display(),
        EXAMPLES.len() - wrong.len(),
        EXAMPLES.len()
    );
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_examples_on_synthea_10() {
    check_examples(&sample_data(), 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_examples_on_synthea_100() {
    if let Some(dir) = shared_dataset("synthea-100") {
        check_examples(&dir, 1).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_examples_on_synthea_615() {
    if let Some(dir) = shared_dataset("synthea-615") {
        check_examples(&dir, 2).await;
    }
}

/// Hand-made resources, one case per line of the semantics tests below.
const FIXTURE: &[(&str, &[&str])] = &[
    (
        "Patient",
        &[
            r#"{"resourceType":"Patient","id":"p1","meta":{"lastUpdated":"2021-05-05T10:00:00Z"},"gender":"female","birthDate":"1960-05-01","name":[{"family":"Müller","given":["Zoë"]}],"address":[{"state":"Massachusetts"}],"deceasedDateTime":"2020-01-01T10:00:00+02:00","identifier":[{"system":"urn:mrn","value":"A1","type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR"}]}},{"system":"urn:ssn","value":"B2","type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"SS"}]}}]}"#,
            r#"{"resourceType":"Patient","id":"p2","gender":"male","birthDate":"1990","name":[{"family":"Bob"}],"address":[{"state":"New York"}],"deceasedBoolean":false,"identifier":[{"value":"A1","type":{"coding":[{"code":"SS"}],"text":"social"}}]}"#,
            r#"{"resourceType":"Patient","id":"p3","meta":{"profile":["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]},"gender":"female"}"#,
            r#"{"resourceType":"Patient","id":"p4"}"#,
        ],
    ),
    (
        "Condition",
        &[
            r#"{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1"},"code":{"coding":[{"system":"http://snomed.info/sct","code":"44054006","display":"Diabetes mellitus type 2"}]},"onsetDateTime":"2020"}"#,
            r#"{"resourceType":"Condition","id":"c2","subject":{"reference":"Patient/p2"},"code":{"coding":[{"system":"http://hl7.org/fhir/sid/icd-10","code":"E11"},{"system":"http://snomed.info/sct","code":"44054006"}]},"onsetPeriod":{"start":"2019-06-01"}}"#,
            r#"{"resourceType":"Condition","id":"c3","subject":{"reference":"Patient/p3"},"code":{"coding":[{"code":"X1"}]}}"#,
        ],
    ),
    (
        "Observation",
        &[
            r#"{"resourceType":"Observation","id":"o1","status":"final","subject":{"reference":"Patient/p1"},"code":{"coding":[{"system":"http://loinc.org","code":"4548-4"}]},"valueQuantity":{"value":6.5,"unit":"%","system":"http://unitsofmeasure.org","code":"%"}}"#,
            r#"{"resourceType":"Observation","id":"o2","status":"final","subject":{"reference":"Patient/p2"},"code":{"coding":[{"system":"http://loinc.org","code":"4548-4"}]},"valueQuantity":{"value":7.2,"unit":"%"}}"#,
            r#"{"resourceType":"Observation","id":"o3","status":"final","subject":{"reference":"Patient/p3"},"code":{"coding":[{"system":"http://loinc.org","code":"39156-5"}]},"effectiveDateTime":"2020-01-01T23:30:00-05:00","valueQuantity":{"value":31.0,"unit":"kg/m2","system":"http://unitsofmeasure.org","code":"kg/m2"}}"#,
            r#"{"resourceType":"Observation","id":"o4","status":"final","subject":{"reference":"Patient/p3"},"code":{"coding":[{"system":"http://loinc.org","code":"8302-2"}]}}"#,
        ],
    ),
    (
        "Encounter",
        &[
            r#"{"resourceType":"Encounter","id":"e1","status":"finished","class":{"code":"AMB"},"subject":{"reference":"Patient/p1"},"serviceProvider":{"reference":"Organization/org1"},"period":{"start":"2019-01-01T09:00:00Z","end":"2019-01-01T10:00:00Z"}}"#,
            r#"{"resourceType":"Encounter","id":"e2","status":"in-progress","class":{"code":"EMER"},"subject":{"reference":"urn:uuid:p2","type":"Patient"},"period":{"start":"2020-03-01"}}"#,
        ],
    ),
    (
        "RiskAssessment",
        &[
            r#"{"resourceType":"RiskAssessment","id":"ra1","status":"final","subject":{"reference":"Patient/p1"},"prediction":[{"probabilityDecimal":0.02}]}"#,
            r#"{"resourceType":"RiskAssessment","id":"ra2","status":"final","subject":{"reference":"Patient/p2"},"prediction":[{"probabilityDecimal":0.42}]}"#,
            r#"{"resourceType":"RiskAssessment","id":"ra3","status":"final","subject":{"reference":"Patient/p4"}}"#,
            r#"{"resourceType":"RiskAssessment","id":"ra4","status":"final","subject":{"reference":"Patient/p3"},"prediction":[{"probabilityDecimal":0.15}]}"#,
        ],
    ),
    (
        "Organization",
        &[r#"{"resourceType":"Organization","id":"org1","name":"Acme Clinic"}"#],
    ),
    (
        "Group",
        &[
            r#"{"resourceType":"Group","id":"g1","type":"person","actual":true,"member":[{"entity":{"reference":"Patient/p1"}},{"entity":{"reference":"Group/g2"}}]}"#,
            r#"{"resourceType":"Group","id":"g2","type":"person","actual":true,"member":[{"entity":{"reference":"Patient/p2"}},{"entity":{"reference":"Group/g1"}}]}"#,
            r#"{"resourceType":"Group","id":"g3","type":"person","actual":true,"member":[{"entity":{"reference":"Patient/p3"}}]}"#,
        ],
    ),
];

struct Fixture {
    _dir: tempfile::TempDir,
    engine: CohortEngine,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    for (resource_type, lines) in FIXTURE {
        std::fs::write(data.join(format!("{resource_type}.ndjson")), lines.join("\n")).expect("write");
    }
    let warehouse = Warehouse::open(&dir.path().join("wh").display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&data], false).await;
    let engine = CohortEngine::open(&warehouse).await.expect("engine");
    Fixture { _dir: dir, engine }
}

impl Fixture {
    async fn patients(&self, filters: &[&str]) -> Vec<String> {
        self.engine
            .evaluate(filters, None)
            .await
            .unwrap_or_else(|e| panic!("{filters:?}: {e}"))
            .patients
    }

    async fn check(&self, cases: &[(&str, &[&str])]) {
        let mut wrong = Vec::new();
        for (filter, expected) in cases {
            let got = self.patients(&[filter]).await;
            if got != *expected {
                wrong.push(format!("{filter}: expected {expected:?}, got {got:?}"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_system_code_text_not_missing() {
    let f = fixture().await;
    f.check(&[
        ("Condition?code=44054006", &["p1", "p2"]),
        ("Condition?code=http://snomed.info/sct|44054006", &["p1", "p2"]),
        ("Condition?code=http://hl7.org/fhir/sid/icd-10|", &["p2"]),
        ("Condition?code=|X1", &["p3"]),
        ("Condition?code=http://snomed.info/sct|X1", &[]),
        ("Condition?code:text=diabetes", &["p1"]),
        ("Condition?code:not=44054006", &["p3"]),
        // Resources without the element match :not.
        ("Patient?gender:not=female", &["p2", "p4"]),
        ("Patient?gender:missing=true", &["p4"]),
        ("Patient?gender:missing=false", &["p1", "p2", "p3"]),
        ("Observation?value-quantity:missing=true", &["p3"]),
        ("Patient?identifier=urn:mrn|A1", &["p1"]),
        ("Patient?identifier=A1", &["p1", "p2"]),
        // :of-type is type-system|type-code|value; an empty type system
        // means the coding has none.
        (
            "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|A1",
            &["p1"],
        ),
        (
            "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|SS|A1",
            &[],
        ),
        (
            "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|SS|B2",
            &["p1"],
        ),
        ("Patient?identifier:of-type=|SS|A1", &["p2"]),
        ("Patient?identifier:of-type=|SS|A1,|MR|B2", &["p2"]),
        ("Patient?_id=p2,p3", &["p2", "p3"]),
        ("Patient?deceased=true", &["p1"]),
        ("Patient?deceased=false", &["p2", "p3", "p4"]),
        ("Encounter?class=EMER", &["p2"]),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dates_by_precision_offset_and_period() {
    let f = fixture().await;
    f.check(&[
        // onset 2020 (a year) lies inside 2020, not inside one of its days.
        ("Condition?onset-date=2020", &["p1"]),
        ("Condition?onset-date=2020-01-01", &[]),
        ("Condition?onset-date=ne2020-01-01", &["p1", "p2"]),
        // An open-ended period reaches any later date.
        ("Condition?onset-date=ge2030", &["p2"]),
        ("Condition?onset-date=lt2019-07-01", &["p2"]),
        ("Condition?onset-date=ap2020-06", &["p1", "p2"]),
        ("Condition?onset-date=sa2019-12-31", &["p1"]),
        ("Condition?onset-date=eb2020", &[]),
        // 2020-01-01T23:30-05:00 is 2020-01-02 in UTC.
        ("Observation?date=2020-01-02", &["p3"]),
        ("Observation?date=2020-01-01", &[]),
        ("Observation?date=2020-01-02T04:30:00Z", &["p3"]),
        // A one-hour period is inside its day, not inside one of its seconds.
        ("Encounter?date=2019-01-01", &["p1"]),
        ("Encounter?date=2019-01-01T09:30:00Z", &[]),
        ("Encounter?date=ap2019-01-01T09:30:00Z", &["p1"]),
        ("Encounter?date=gt2019-01-01T09:30:00Z", &["p1", "p2"]),
        ("Patient?death-date=2020-01-01T08:00:00Z", &["p1"]),
        ("Patient?death-date=2020-01-01T08:00:00+02:00", &[]),
        ("Patient?birthdate=1960", &["p1"]),
        ("Patient?birthdate=sa1970", &["p2"]),
        // p2's birthDate 1990 is all of 1990: it reaches both sides of June.
        ("Patient?birthdate=le1990-06-01", &["p1", "p2"]),
        ("Patient?birthdate=ge1990-06-01", &["p2"]),
        ("Patient?birthdate=lt1990-01-01", &["p1"]),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantities_strings_references() {
    let f = fixture().await;
    f.check(&[
        // eq uses the value's precision: 6.5 is [6.45, 6.55).
        ("Observation?value-quantity=6.5", &["p1"]),
        ("Observation?value-quantity=6.50", &["p1"]),
        ("Observation?value-quantity=6", &[]),
        ("Observation?value-quantity=gt6.5", &["p2", "p3"]),
        ("Observation?value-quantity=le6.5", &["p1"]),
        ("Observation?value-quantity=ap7", &["p1", "p2"]),
        ("Observation?value-quantity=7.2||%", &["p2"]),
        ("Observation?value-quantity=6.5|http://unitsofmeasure.org|%", &["p1"]),
        ("Observation?value-quantity=7.2|http://unitsofmeasure.org|%", &[]),
        (
            "Observation?value-quantity=ge31|http://unitsofmeasure.org|kg/m2",
            &["p3"],
        ),
        ("Observation?code-value-quantity=http://loinc.org|4548-4$gt7", &["p2"]),
        // Strings: case- and accent-insensitive prefix; :exact; :contains.
        ("Patient?name=zoe", &["p1"]),
        ("Patient?name=MÜL", &["p1"]),
        ("Patient?name:exact=Zoë", &["p1"]),
        ("Patient?name:exact=zoë", &[]),
        ("Patient?name:contains=ULLE", &["p1"]),
        ("Patient?address-state=new", &["p2"]),
        ("Patient?name=100%25", &[]),
        // References: Type/id, a bare id, a :Type modifier; urn:uuid with a type.
        ("Encounter?service-provider=Organization/org1", &["p1"]),
        ("Encounter?service-provider=org1", &["p1"]),
        ("Encounter?service-provider=Organization/org2", &[]),
        ("Encounter?patient=p2", &["p2"]),
        ("Encounter?subject:Patient=p1", &["p1"]),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_uris_and_last_updated() {
    let f = fixture().await;
    f.check(&[
        // A number's precision sets its range: 0.4 is [0.35, 0.45).
        ("RiskAssessment?probability=0.4", &["p2"]),
        ("RiskAssessment?probability=0.40", &[]),
        ("RiskAssessment?probability=0.02", &["p1"]),
        ("RiskAssessment?probability=ne0.02", &["p2", "p3"]),
        ("RiskAssessment?probability=gt0.4", &["p2"]),
        ("RiskAssessment?probability=ge0.42", &["p2"]),
        ("RiskAssessment?probability=lt0.42", &["p1", "p3"]),
        ("RiskAssessment?probability=le0.02", &["p1"]),
        // sa/eb: the value lies wholly above/below the search value's
        // range, so 0.42 is not after 0.4 (whose range reaches 0.45).
        ("RiskAssessment?probability=sa0.4", &[]),
        ("RiskAssessment?probability=sa0.3", &["p2"]),
        ("RiskAssessment?probability=eb0.42", &["p1", "p3"]),
        ("RiskAssessment?probability=eb0.5", &["p1", "p2", "p3"]),
        ("RiskAssessment?probability=ap0.4", &["p2"]),
        ("RiskAssessment?probability:missing=true", &["p4"]),
        (
            "RiskAssessment?probability:missing=true,false",
            &["p1", "p2", "p3", "p4"],
        ),
        // A value on a range's upper bound is outside it (in f64, 0.1 + 0.05
        // is 0.15000000000000002: the bounds are computed in decimal).
        ("RiskAssessment?probability=0.1", &[]),
        ("RiskAssessment?probability=sa0.1", &["p2", "p3"]),
        // As many decimal places as a decimal holds: a range, not a panic.
        ("RiskAssessment?probability=0.1500000000000000000000000000", &["p3"]),
        (
            "RiskAssessment?probability=sa0.1400000000000000000000000000",
            &["p2", "p3"],
        ),
        // Quantities compare the same way: 7 is [6.5, 7.5).
        ("Observation?value-quantity=ne6.5", &["p2", "p3"]),
        ("Observation?value-quantity=lt7.2", &["p1"]),
        ("Observation?value-quantity=gt7", &["p2", "p3"]),
        ("Observation?value-quantity=sa7", &["p3"]),
        ("Observation?value-quantity=eb7", &[]),
        ("Observation?value-quantity=eb7.5", &["p1", "p2"]),
        // uri: exact, :below (a prefix of the stored uri), :above (the
        // stored uri is a prefix of the search value).
        (
            "Patient?_profile=http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient",
            &["p3"],
        ),
        ("Patient?_profile=http://hl7.org/fhir/us/core", &[]),
        ("Patient?_profile:below=http://hl7.org/fhir/us/core", &["p3"]),
        ("Patient?_profile:below=http://example.org", &[]),
        (
            "Patient?_profile:above=http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient/v2",
            &["p3"],
        ),
        ("Patient?_profile:above=http://hl7.org/fhir/us/core", &[]),
        ("Patient?_profile:missing=false", &["p3"]),
        // _lastUpdated: meta.lastUpdated, else when the load stored the
        // resource (what `$export`'s `_since` counts as its change).
        ("Patient?_lastUpdated=2021-05-05", &["p1"]),
        ("Patient?_lastUpdated=lt2022", &["p1"]),
        ("Patient?_lastUpdated=ge2022", &["p2", "p3", "p4"]),
        ("Condition?_lastUpdated=ge2022", &["p1", "p2", "p3"]),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_has_and_several_filters() {
    let f = fixture().await;
    f.check(&[
        ("Condition?subject:Patient.gender=male", &["p2"]),
        ("Observation?subject:Patient.name=zoe", &["p1"]),
        ("Patient?_has:Condition:patient:code=44054006", &["p1", "p2"]),
        ("Patient?_has:Observation:patient:value-quantity=gt30", &["p3"]),
        // Both clauses must hold for the same resource.
        ("Observation?code=4548-4&value-quantity=gt31", &[]),
        ("Observation?code=39156-5&value-quantity=gt30", &["p3"]),
        // p3 has code 8302-2 (o4) and a value over 30 (o3), but not on one
        // resource.
        ("Observation?code=8302-2&value-quantity=gt30", &[]),
        // A chain through a parameter with a single target type.
        ("Encounter?service-provider.name=acme", &["p1"]),
        ("Encounter?service-provider.name=other", &[]),
    ])
    .await;
    // Several filters: each may be met by another resource; all must hold.
    assert_eq!(
        f.patients(&["Patient?gender=female", "Condition?code=44054006"]).await,
        ["p1"]
    );
    assert_eq!(
        f.patients(&["Observation?code=4548-4", "Encounter?class=EMER"]).await,
        ["p2"]
    );
    assert_eq!(
        f.patients(&["Observation?code=8302-2", "Observation?value-quantity=gt30"])
            .await,
        ["p3"],
        "two filters may be met by two resources"
    );
    assert!(
        f.patients(&["Patient?gender=male", "Condition?code=X1"])
            .await
            .is_empty()
    );
    // Three filters, one of them a Patient search, in either order.
    assert_eq!(
        f.patients(&["Observation?code=4548-4", "Encounter?class=EMER", "Patient?gender=male"])
            .await,
        ["p2"]
    );
    assert_eq!(
        f.patients(&["Patient?gender=male", "Encounter?class=EMER", "Observation?code=4548-4"])
            .await,
        ["p2"]
    );
    // More filters than one intersection mask holds (62) are intersected
    // in groups: the same filter 70 times is that filter, one filter that
    // nobody meets among 69 that p1 and p3 meet empties the cohort, and one
    // that only p3 meets keeps p3, wherever it stands.
    let same = vec!["Condition?code=44054006"; 70];
    assert_eq!(f.patients(&same).await, ["p1", "p2"]);
    let mut last_fails = vec!["Patient?gender=female"; 69];
    last_fails.push("Condition?code=nobody-has-this");
    assert!(f.patients(&last_fails).await.is_empty());
    let mut first_fails = last_fails.clone();
    first_fails.rotate_right(1);
    assert!(f.patients(&first_fails).await.is_empty());
    for at in [0, 40, 69] {
        let mut only_p3 = vec!["Patient?gender=female"; 69];
        only_p3.insert(at, "Condition?code=|X1");
        assert_eq!(f.patients(&only_p3).await, ["p3"], "at {at}");
    }
    // No filter: every patient.
    assert_eq!(f.patients(&[]).await, ["p1", "p2", "p3", "p4"]);
}

/// A folder `name` under `dir` holding `lines` as one NDJSON file.
fn dataset(dir: &Path, name: &str, lines: &[&str]) -> std::path::PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir(&folder).expect("mkdir");
    std::fs::write(folder.join("data.ndjson"), lines.join("\n")).expect("write");
    folder
}

async fn patients(engine: &CohortEngine, filter: &str) -> Vec<String> {
    engine.evaluate(&[filter], None).await.expect(filter).patients
}

/// `_has` reads the inner clause's compartment column only for reference
/// parameters the load found to target exactly each resource's compartment;
/// a later load that breaks this (an Observation performed by another
/// patient) must turn it off, or `_has:Observation:patient` would also find
/// the performer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn has_reads_compartments_only_where_the_load_proved_them_equal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, lines: &[&str]| dataset(dir.path(), name, lines);
    let first = write(
        "first",
        &[
            r#"{"resourceType":"Patient","id":"p1"}"#,
            r#"{"resourceType":"Patient","id":"p2"}"#,
            r#"{"resourceType":"Observation","id":"o1","status":"final","subject":{"reference":"Patient/p1"},"code":{"coding":[{"code":"a"}]}}"#,
            r#"{"resourceType":"Observation","id":"o2","status":"final","subject":{"reference":"Patient/p2"},"code":{"coding":[{"code":"b"}]}}"#,
        ],
    );
    let second = write(
        "second",
        &[
            r#"{"resourceType":"Observation","id":"o3","status":"final","subject":{"reference":"Patient/p1"},"performer":[{"reference":"Patient/p2"}],"code":{"coding":[{"code":"c"}]}}"#,
        ],
    );
    let warehouse = Warehouse::open(&dir.path().join("wh").display().to_string()).expect("warehouse");
    let references = |snapshot: &fhirlake::warehouse::Snapshot| {
        snapshot.tables["index/reference/Observation"]
            .compartment_references
            .clone()
    };

    load_into(&warehouse, &[&first], false).await;
    let engine = CohortEngine::open(&warehouse).await.expect("engine");
    assert_eq!(references(engine.snapshot()), ["patient", "subject"]);
    assert_eq!(
        patients(&engine, "Patient?_has:Observation:patient:code=a").await,
        ["p1"]
    );
    assert_eq!(
        patients(&engine, "Patient?_has:Observation:subject:code=b").await,
        ["p2"]
    );

    // o3 is in the compartments of p1 (subject) and p2 (performer).
    load_into(&warehouse, &[&second], false).await;
    let engine = CohortEngine::open(&warehouse).await.expect("engine");
    assert!(
        references(engine.snapshot()).is_empty(),
        "{:?}",
        references(engine.snapshot())
    );
    assert_eq!(
        patients(&engine, "Patient?_has:Observation:patient:code=c").await,
        ["p1"]
    );
    assert_eq!(
        patients(&engine, "Patient?_has:Observation:performer:code=c").await,
        ["p2"]
    );
    assert_eq!(
        patients(&engine, "Patient?_has:Observation:patient:code=a").await,
        ["p1"]
    );
}

/// Index rows a `--no-index` load left behind (it deleted every Observation
/// but does not touch the index) were never checked, so a later indexed
/// load that appends to that index must not claim `subject` is the
/// compartment: the stale o1 rows carry its performer p2 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn has_shortcut_is_off_for_index_rows_an_unindexed_load_left() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, lines: &[&str]| dataset(dir.path(), name, lines);
    let first = write(
        "first",
        &[
            r#"{"resourceType":"Patient","id":"p1"}"#,
            r#"{"resourceType":"Patient","id":"p2"}"#,
            r#"{"resourceType":"Observation","id":"o1","status":"final","subject":{"reference":"Patient/p1"},"performer":[{"reference":"Patient/p2"}],"code":{"coding":[{"code":"x"}]}}"#,
        ],
    );
    let delete = write(
        "delete",
        &[
            r#"{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"Observation/o1"}}]}"#,
        ],
    );
    let third = write(
        "third",
        &[
            r#"{"resourceType":"Observation","id":"o2","status":"final","subject":{"reference":"Patient/p1"},"code":{"coding":[{"code":"y"}]}}"#,
        ],
    );
    let warehouse = Warehouse::open(&dir.path().join("wh").display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&first], false).await;
    let unindexed = fhirlake::ingest::LoadOptions {
        quiet: true,
        index: false,
        ..Default::default()
    };
    fhirlake::ingest::load(&warehouse, &[delete.display().to_string()], &unindexed)
        .await
        .expect("deleting load");
    load_into(&warehouse, &[&third], false).await;
    let engine = CohortEngine::open(&warehouse).await.expect("engine");
    let entry = &engine.snapshot().tables["index/reference/Observation"];
    assert!(
        entry.compartment_references.is_empty(),
        "{:?}",
        entry.compartment_references
    );
    // The join path reads the stale o1 rows too, but only its subject.
    assert_eq!(
        patients(&engine, "Patient?_has:Observation:subject:code=x").await,
        ["p1"]
    );
}

/// `_lastUpdated` of a resource without `meta.lastUpdated` is when its
/// load stored it, also after a reload merged the type; `_id` and this
/// fallback are read from the resource table, so the index holds no row
/// per resource for either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_updated_falls_back_to_the_load_time_through_rebuilds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = dataset(
        dir.path(),
        "first",
        &[
            r#"{"resourceType":"Patient","id":"p1"}"#,
            r#"{"resourceType":"Patient","id":"p2"}"#,
        ],
    );
    let second = dataset(
        dir.path(),
        "second",
        &[r#"{"resourceType":"Patient","id":"p2","gender":"male"}"#],
    );
    let warehouse = Warehouse::open(&dir.path().join("wh").display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&first], false).await;
    load_into(&warehouse, &[&second], false).await;
    let loaded = |id: &str| format!("SELECT CAST(loaded_at AS BIGINT) FROM fhir.\"Patient\" WHERE id = '{id}'");
    let (t1, t2) = (
        query_i64(&warehouse, &loaded("p1")).await,
        query_i64(&warehouse, &loaded("p2")).await,
    );
    assert!(t2 - t1 > 4_000, "the second load ran later: {t1} {t2}");
    // A millisecond between the two loads, written as a search instant.
    let between = chrono::DateTime::from_timestamp_micros(t1 + (t2 - t1) / 2)
        .expect("time")
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let engine = CohortEngine::open(&warehouse).await.expect("engine");
    assert_eq!(
        patients(&engine, &format!("Patient?_lastUpdated=lt{between}")).await,
        ["p1"]
    );
    assert_eq!(
        patients(&engine, &format!("Patient?_lastUpdated=ge{between}")).await,
        ["p2"]
    );
    assert_eq!(
        patients(&engine, &format!("Patient?_lastUpdated=ge{between}&_id=p1,p2")).await,
        ["p2"]
    );
    assert_eq!(patients(&engine, "Patient?_id=p2").await, ["p2"]);
    assert_eq!(patients(&engine, "Patient?_id:not=p2").await, ["p1"]);
    assert_eq!(
        patients(&engine, "Patient?_lastUpdated:missing=true").await,
        Vec::<String>::new()
    );
    // No index rows repeat what the resource table holds: these patients
    // have no other date, so there is no date index at all.
    assert_eq!(
        query_i64(&warehouse, "SELECT count(*) FROM index_token WHERE param = '_id'").await,
        0
    );
    assert_eq!(
        query_i64(
            &warehouse,
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'index_date'"
        )
        .await,
        0
    );
    assert_eq!(
        query_i64(&warehouse, "SELECT count(DISTINCT loaded_at) FROM fhir.\"Patient\"").await,
        2,
        "p2 kept its second load's time"
    );
}

/// The server's shared engine: reused while the version is current, rebuilt
/// after a commit (a cohort then sees the new data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_engine_follows_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let warehouse = Warehouse::open(&dir.path().join("wh").display().to_string()).expect("warehouse");
    let current = fhirlake::cohort::CurrentEngine::new(warehouse.clone());
    assert!(matches!(current.get().await, Err(CohortError::EmptyWarehouse)));
    let write = |name: &str, line: &str| dataset(dir.path(), name, &[line]);
    let first = write("first", r#"{"resourceType":"Patient","id":"p1","gender":"female"}"#);
    load_into(&warehouse, &[&first], false).await;
    let engine = current.get().await.expect("engine");
    assert!(std::sync::Arc::ptr_eq(&engine, &current.get().await.expect("engine")));
    assert_eq!(patients(&engine, "Patient?gender=female").await, ["p1"]);

    let second = write("second", r#"{"resourceType":"Patient","id":"p2","gender":"female"}"#);
    load_into(&warehouse, &[&second], false).await;
    let newer = current.get().await.expect("engine");
    assert_eq!(newer.version(), engine.version() + 1);
    assert_eq!(patients(&newer, "Patient?gender=female").await, ["p1", "p2"]);
    // A request that still holds the old engine reads its own snapshot.
    assert_eq!(patients(&engine, "Patient?gender=female").await, ["p1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_groups_expand_recursively() {
    let f = fixture().await;
    // g1 holds p1 and g2, which holds p2 and g1 again (a cycle).
    let mut groups = GroupResolver::new(&f.engine);
    let members = groups.members("g1").await.expect("g1");
    assert_eq!(members, ["p1", "p2"]);
    let base = Some(members.as_slice());
    let result = f
        .engine
        .evaluate(&["Condition?code=44054006"], base)
        .await
        .expect("cohort");
    assert_eq!(result.patients, ["p1", "p2"]);
    let g3 = groups.members("g3").await.expect("g3");
    let result = f
        .engine
        .evaluate(&["Condition?code=44054006"], Some(g3.as_slice()))
        .await
        .expect("cohort");
    assert!(result.patients.is_empty());
    let result = f
        .engine
        .evaluate(&[] as &[&str], Some(g3.as_slice()))
        .await
        .expect("all");
    assert_eq!(result.patients, ["p3"]);
    assert!(matches!(groups.members("nope").await, Err(GroupError::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expressions_are_clear_errors() {
    let f = fixture().await;
    let cases: &[(&str, &str)] = &[
        ("Condition?", "no search parameters"),
        ("Foo?x=1", "'Foo' is not a FHIR R4 resource type"),
        ("Condition?code:bogus=1", "bogus"),
        ("Condition?code=a\\", "escape"),
        ("Condition?_sort=date", "'_sort' is a result parameter"),
        ("Condition?nonsense=1", "supported: "),
        ("Condition?onset-date=yesterday", "expected a date"),
        ("Condition?code:of-type=a|b|c", "not an Identifier parameter"),
        (
            "Observation?component-code-value-quantity=http://loinc.org|8480-6$gt100",
            "repeating",
        ),
        ("Condition?subject.gender=male", "name one"),
        (
            "Observation?code-value-quantity:missing=true",
            ":missing is not supported on composite",
        ),
    ];
    for (expression, needle) in cases {
        match f.engine.evaluate(&[expression], None).await {
            Ok(r) => panic!("{expression} should fail, gave {:?}", r.patients),
            Err(e) => assert!(
                e.to_string().contains(needle),
                "{expression}: '{e}' should mention '{needle}'"
            ),
        }
    }
}

#[test]
fn cli_counts_explains_and_refuses_bad_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wh = dir.path().join("wh").display().to_string();
    let sample = sample_data().display().to_string();
    let out = fhirlake(&["--warehouse", &wh, "load", "-q", &sample]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = fhirlake(&[
        "--warehouse",
        &wh,
        "cohort",
        "--ids",
        "Patient?gender=female",
        "Condition?code=http://snomed.info/sct|15777000",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"1"), "{text}");
    assert_eq!(lines.len(), 2, "the count, then one id: {text}");
    let out = fhirlake(&["--warehouse", &wh, "cohort", "--explain", "Condition?code=15777000"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Logical plan") && text.contains("row_groups_pruned_statistics"),
        "{text}"
    );
    let out = fhirlake(&["--warehouse", &wh, "cohort", "Condition?_sort=date"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("_sort"));
}

#[test]
fn cli_base_group_limits_the_cohort_to_its_members() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    for (resource_type, lines) in FIXTURE {
        std::fs::write(data.join(format!("{resource_type}.ndjson")), lines.join("\n")).expect("write");
    }
    let wh = dir.path().join("wh").display().to_string();
    let out = fhirlake(&["--warehouse", &wh, "load", "-q", &data.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cohort = |args: &[&str]| {
        let mut all = vec!["--warehouse", wh.as_str(), "cohort", "--ids"];
        all.extend_from_slice(args);
        fhirlake(&all)
    };
    let stdout = |out: &std::process::Output| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    // g1 holds p1 and g2 (p2, and g1 again).
    let out = cohort(&["--base-group", "g1", "Condition?code=44054006"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout(&out), ["2", "p1", "p2"]);
    let out = cohort(&["--base-group", "g3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout(&out), ["1", "p3"], "no filter: the group's members");
    let out = cohort(&["--base-group", "g3", "Condition?code=44054006"]);
    assert_eq!(stdout(&out), ["0"]);
    let out = cohort(&["--base-group", "nope", "Condition?code=44054006"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

/// Random strings, and random sequences of search syntax, never make the
/// parser panic.
#[test]
fn parser_never_panics() {
    let pieces = [
        "Patient",
        "Condition",
        "Observation",
        "?",
        "&",
        "=",
        ",",
        "|",
        "$",
        ":",
        ".",
        "\\",
        "%",
        "%2",
        "%zz",
        "code",
        "gender",
        "_has",
        "_id",
        "subject",
        "Patient.",
        "missing",
        "not",
        "exact",
        "ge",
        "ap",
        "2020",
        "-01",
        "T10:00",
        "Z",
        "+05:00",
        "6.5",
        "e9",
        "http://x",
        "_sort",
        "value-quantity",
        "code-value-quantity",
        "ü",
        "\u{0}",
        " ",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..20_000 {
        let len = (next() % 12) as usize;
        let text: String = if i % 2 == 0 {
            (0..len)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect()
        } else {
            (0..len * 3)
                .filter_map(|_| char::from_u32((next() % 0x250) as u32))
                .collect()
        };
        let _ = fhirlake::search::parse_search(&text);
    }
}

/// Parameters derived from others (`patient` = `subject` targeting a
/// Patient, `combo-code` = `code` ∪ `component-code`) have no index rows of
/// their own, and search exactly as their definitions say: a Group or an
/// untyped `urn:uuid:` subject is no `patient`; `:missing` and `:not` see
/// the derived values; the union finds codes in either place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_parameters_search_like_their_definitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dataset(
        dir.path(),
        "data",
        &[
            r#"{"resourceType":"Patient","id":"p1"}"#,
            r#"{"resourceType":"Patient","id":"p2"}"#,
            r#"{"resourceType":"Patient","id":"p3"}"#,
            r#"{"resourceType":"Group","id":"g1","type":"person","actual":true,"member":[{"entity":{"reference":"Patient/p3"}}]}"#,
            r#"{"resourceType":"Observation","id":"o1","status":"final","subject":{"reference":"Patient/p1"},"code":{"coding":[{"system":"s","code":"a"}]}}"#,
            r#"{"resourceType":"Observation","id":"o2","status":"final","subject":{"reference":"urn:uuid:p2","type":"Patient"},"code":{"coding":[{"system":"s","code":"b"}]},"component":[{"code":{"coding":[{"system":"s","code":"c"}]}}]}"#,
            r#"{"resourceType":"Observation","id":"o3","status":"final","subject":{"reference":"Group/g1"},"performer":[{"reference":"Patient/p3"}],"code":{"coding":[{"system":"s","code":"c"}]}}"#,
            r#"{"resourceType":"Observation","id":"o4","status":"final","subject":{"reference":"urn:uuid:p3"},"performer":[{"reference":"Patient/p3"}],"code":{"coding":[{"system":"s","code":"d"}]}}"#,
        ],
    );
    let warehouse = Warehouse::open(&dir.path().join("wh").display().to_string()).expect("warehouse");
    load_into(&warehouse, &[&data], false).await;
    let engine = CohortEngine::open(&warehouse).await.expect("engine");
    // The index holds `subject` rows only.
    let (session, _) = fhirlake::warehouse::catalog::session_for(&warehouse)
        .await
        .expect("session");
    let params = session
        .sql("SELECT DISTINCT param FROM index_reference WHERE resource_type = 'Observation' ORDER BY 1")
        .await
        .expect("sql")
        .collect()
        .await
        .expect("rows");
    let params = datafusion::arrow::util::pretty::pretty_format_batches(&params)
        .expect("format")
        .to_string();
    assert!(params.contains("subject") && !params.contains("| patient"), "{params}");
    for (filter, expected) in [
        // o1 (Patient/p1) and o2 (urn:uuid typed Patient); not o3 (a Group)
        // nor o4 (an untyped urn:uuid).
        ("Observation?patient:missing=false", &["p1", "p2"][..]),
        ("Observation?patient=p2", &["p2"]),
        ("Observation?patient=Patient/p1", &["p1"]),
        ("Observation?patient=g1", &[]),
        ("Observation?subject=g1", &["p3"]),
        // o3 and o4 have no patient (both are in p3's compartment as performer).
        ("Observation?patient:missing=true", &["p3"]),
        ("Observation?patient:Patient.gender:missing=true", &["p1", "p2"]),
        ("Patient?_has:Observation:patient:code=b", &["p2"]),
        ("Patient?_has:Observation:patient:code=c", &[]),
        ("Patient?_has:Observation:subject:code=c", &[]),
        // combo-code: code or component code.
        ("Observation?combo-code=s|c", &["p2", "p3"]),
        ("Observation?combo-code=s|b", &["p2"]),
        ("Observation?code=s|c", &["p3"]),
        ("Observation?combo-code:not=s|c", &["p1", "p3"]),
        ("Observation?combo-code:missing=true", &[]),
    ] {
        assert_eq!(patients(&engine, filter).await, expected, "{filter}");
    }
}
