//! Cost of extracting search-index values at load: every supported search
//! parameter of Patient, Condition, Encounter and Observation evaluated on the
//! resources of `../shared/data/synthea-615`, one thread, in-process.
//!
//! Run: `cargo bench --bench search_extract`.

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use fhirlake::search::SearchRegistry;
use fhirlake::search::extract::{TypeIndexer, index_values};

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/synthea-615");
    if !dir.exists() {
        eprintln!("SKIPPED: {} is absent", dir.display());
        return;
    }
    let registry = SearchRegistry::r4().expect("registry");
    println!(
        "| type | resources | parameters | values | per-parameter s | resources/s | TypeIndexer s | resources/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for resource_type in ["Patient", "Condition", "Encounter", "Observation"] {
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with(&format!("{resource_type}.")) {
                let mut text = String::new();
                flate2::read::MultiGzDecoder::new(std::fs::File::open(entry.path()).expect("open"))
                    .read_to_string(&mut text)
                    .expect("gunzip");
                lines.extend(text.lines().map(str::to_string));
            }
        }
        let params = registry.supported(resource_type);
        let started = Instant::now();
        let mut values = 0usize;
        for line in &lines {
            let resource = fhirlake::json::parse(line).expect("json");
            for param in &params {
                values += index_values(param, &resource).map(|v| v.len()).unwrap_or(0);
            }
        }
        let secs = started.elapsed().as_secs_f64();
        // The same values with shared evaluations and absent-element skipping.
        let indexer = TypeIndexer::new(registry, resource_type);
        let started = Instant::now();
        let mut fast_values = 0usize;
        let mut out = Vec::new();
        for line in &lines {
            let resource = fhirlake::json::parse(line).expect("json");
            out.clear();
            indexer.index(&resource, &mut out).expect("index");
            fast_values += out.len();
        }
        let fast = started.elapsed().as_secs_f64();
        assert_eq!(fast_values, values, "both ways index the same values");
        println!(
            "| {resource_type} | {} | {} | {values} | {secs:.3} | {:.0} | {fast:.3} | {:.0} |",
            lines.len(),
            params.len(),
            lines.len() as f64 / secs,
            lines.len() as f64 / fast
        );
    }
}
