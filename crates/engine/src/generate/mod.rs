//! Scaled-up benchmark data: copies of a real dataset with fresh, consistent ids.
//!
//! Every UUID in every line (resource ids, references, identifiers carrying
//! the id) is replaced by a UUID derived from the original and the copy
//! number, so copy `k` is a closed world like the source and references stay
//! consistent across files. Copy 0 is the source unchanged. The mapping is a
//! fixed hash, so the output is the same on every run. Ids that are not UUIDs
//! are kept (Synthea and most bulk exports use UUIDs).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::ingest::source::is_ndjson_name;

/// Errors of `fhirlake gen`.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The source folder has no NDJSON.
    #[error("no NDJSON files (*.ndjson, *.ndjson.gz) in {0}")]
    NoInput(PathBuf),
}

/// What `generate` wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GenerateReport {
    /// Files written.
    pub files: usize,
    /// Lines (resources) written.
    pub lines: u64,
    /// Bytes of NDJSON written (before compression).
    pub bytes: u64,
}

/// Writes `copies` copies of the NDJSON files in `from` to `out`. A file
/// `Patient.000.ndjson` becomes `Patient.c0003-000.ndjson` in copy 3 (still
/// bulk-export naming: type, one segment, `.ndjson`). With `gzip`, output is
/// `.ndjson.gz`.
pub fn generate(from: &Path, copies: usize, out: &Path, gzip: bool) -> Result<GenerateReport, GenerateError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GenerateError::Io {
            path: path.clone(),
            source,
        }
    };
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(from)
        .map_err(io(from))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(is_ndjson_name))
        .collect();
    if inputs.is_empty() {
        return Err(GenerateError::NoInput(from.to_path_buf()));
    }
    inputs.sort();
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut report = GenerateReport::default();
    for copy in 0..copies {
        for input in &inputs {
            let name = input.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let stem = name.trim_end_matches(".gz").trim_end_matches(".ndjson");
            let (resource_type, rest) = stem.split_once('.').unwrap_or((stem, "0"));
            let ext = if gzip { "ndjson.gz" } else { "ndjson" };
            let target = out.join(format!("{resource_type}.c{copy:04}-{}.{ext}", rest.replace('.', "-")));
            let reader = File::open(input).map_err(io(input))?;
            let reader: Box<dyn Read> = if name.ends_with(".gz") {
                Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(reader)))
            } else {
                Box::new(reader)
            };
            let file = File::create(&target).map_err(io(&target))?;
            let mut writer: Box<dyn Write> = if gzip {
                Box::new(flate2::write::GzEncoder::new(
                    BufWriter::new(file),
                    flate2::Compression::fast(),
                ))
            } else {
                Box::new(BufWriter::with_capacity(1 << 20, file))
            };
            let mut reader = BufReader::with_capacity(1 << 20, reader);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = reader.read_until(b'\n', &mut line).map_err(io(input))?;
                if n == 0 {
                    break;
                }
                rewrite_uuids(&mut line, copy as u64);
                writer.write_all(&line).map_err(io(&target))?;
                report.lines += 1;
                report.bytes += line.len() as u64;
            }
            writer.flush().map_err(io(&target))?;
            drop(writer);
            report.files += 1;
        }
    }
    Ok(report)
}

fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

/// Replaces, in place, every UUID (8-4-4-4-12 hex digits not inside a longer
/// alphanumeric run) by its copy-`copy` counterpart. Copy 0 is unchanged.
pub fn rewrite_uuids(line: &mut [u8], copy: u64) {
    if copy == 0 {
        return;
    }
    let mut i = 0;
    while i + 36 <= line.len() {
        let boundary_before = i == 0 || !line[i - 1].is_ascii_alphanumeric();
        let boundary_after = line.get(i + 36).is_none_or(|b| !b.is_ascii_alphanumeric());
        if boundary_before && boundary_after && is_uuid(&line[i..i + 36]) {
            let mapped = map_uuid(&line[i..i + 36], copy);
            line[i..i + 36].copy_from_slice(&mapped);
            i += 36;
        } else {
            i += 1;
        }
    }
}

fn is_uuid(s: &[u8]) -> bool {
    s.iter().enumerate().all(|(i, &b)| {
        if matches!(i, 8 | 13 | 18 | 23) {
            b == b'-'
        } else {
            is_hex(b)
        }
    })
}

fn fnv1a(seed: u64, parts: &[&[u8]]) -> u64 {
    let mut h = seed;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b.to_ascii_lowercase());
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    // Final avalanche (splitmix64) so nearby inputs give unrelated outputs.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn map_uuid(uuid: &[u8], copy: u64) -> [u8; 36] {
    // Decimal digits: `fnv1a` lower-cases its input (UUIDs are
    // case-insensitive), which would fold the raw bytes of copies 65 and 97.
    let copy_text = copy.to_string();
    let copy_bytes = copy_text.as_bytes();
    let hi = fnv1a(0xcbf2_9ce4_8422_2325, &[copy_bytes, b"/", uuid]);
    let lo = fnv1a(0x8422_2325_cbf2_9ce4, &[uuid, b"/", copy_bytes]);
    let hex = format!("{hi:016x}{lo:016x}");
    let h = hex.as_bytes();
    let mut out = [b'-'; 36];
    let mut src = 0;
    for (i, slot) in out.iter_mut().enumerate() {
        if !matches!(i, 8 | 13 | 18 | 23) {
            *slot = h[src];
            src += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_copy_gets_its_own_ids() {
        let id = b"6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2";
        let mapped: std::collections::HashSet<[u8; 36]> = (1..300).map(|copy| map_uuid(id, copy)).collect();
        assert_eq!(mapped.len(), 299, "copies 65 and 97 once collided");
    }

    #[test]
    fn rewrites_ids_and_references_consistently() {
        let id = "6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2";
        let mut patient = format!(r#"{{"resourceType":"Patient","id":"{id}"}}"#).into_bytes();
        let mut cond = format!(r#"{{"subject":{{"reference":"Patient/{id}"}},"x":"urn:uuid:{id}"}}"#).into_bytes();
        rewrite_uuids(&mut patient, 2);
        rewrite_uuids(&mut cond, 2);
        let patient = String::from_utf8(patient).unwrap();
        let cond = String::from_utf8(cond).unwrap();
        let new_id = &patient[32..68];
        assert_ne!(new_id, id);
        assert!(is_uuid(new_id.as_bytes()));
        assert!(cond.contains(&format!("Patient/{new_id}")));
        assert!(cond.contains(&format!("urn:uuid:{new_id}")));
        let mut again = format!(r#""{id}""#).into_bytes();
        rewrite_uuids(&mut again, 3);
        assert_ne!(&again[1..37], new_id.as_bytes(), "copies differ");
    }

    #[test]
    fn leaves_non_uuids_alone() {
        let mut text = b"x6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2 1234".to_vec();
        let before = text.clone();
        rewrite_uuids(&mut text, 1);
        assert_eq!(text, before);
    }
}
