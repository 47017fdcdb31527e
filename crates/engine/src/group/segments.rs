//! Membership segments: a stored Group's membership rows as Parquet files
//! of [`membership_schema`] beside its record
//! (`_server/membership/<group>/<version>-<tag>.parquet`). A change writes
//! only the rows it adds or ends (a delta segment), so adding one member to
//! a 100,000-member Group writes a few hundred bytes of rows and a small
//! record; the record lists the segments, and the one atomic put of the
//! record is what makes a change visible (segments it does not list are
//! leftovers of an interrupted write). Reading folds the segments in
//! order: a later row for the same (patient, entry, `added_in`) — one that
//! ends it — replaces the earlier. Decision 0025.

use std::collections::HashMap;

use bytes::Bytes;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::UInt64Type;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

use super::GroupError;
use super::membership::{Member, MemberEntry, membership_batch, membership_schema};
use crate::export::Progress;
use crate::state::StateStore;
use crate::store::StoreError;

/// Folder of membership segments under `_server/`.
pub const MEMBERSHIP_DIR: &str = "membership";

/// Rows per segment file: a large change is written as several parts
/// (each reported as progress) before the record names them all.
pub const SEGMENT_ROWS: usize = 50_000;

/// How membership segments are written.
#[derive(Debug, Clone)]
pub struct MembershipOptions {
    /// Rows per segment file ([`SEGMENT_ROWS`]).
    pub part_rows: usize,
    /// Pause after each part (tests watch a large change in progress).
    pub part_delay: std::time::Duration,
}

impl Default for MembershipOptions {
    fn default() -> Self {
        Self {
            part_rows: SEGMENT_ROWS,
            part_delay: std::time::Duration::ZERO,
        }
    }
}

/// Delta segments a Group keeps before its rows are compacted into one.
pub const MAX_SEGMENTS: usize = 16;

/// One membership segment file of a Group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// File name under the Group's membership folder.
    pub name: String,
    /// The Group version that wrote it.
    pub version: u64,
    /// Rows in it.
    pub rows: u64,
}

impl Segment {
    fn relative(group: &str, name: &str) -> String {
        format!("{MEMBERSHIP_DIR}/{group}/{name}")
    }
}

/// Writes `rows` of Group `group` as segment files of Group version
/// `version` (several parts when large), reporting each part on
/// `progress`. Nothing refers to them until the caller puts the record.
pub async fn write_segments(
    state: &StateStore,
    group: &str,
    version: u64,
    rows: &[Member],
    options: &MembershipOptions,
    progress: &Progress,
) -> Result<Vec<Segment>, GroupError> {
    let chunks: Vec<&[Member]> = rows.chunks(options.part_rows.max(1)).collect();
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let mut segments = Vec::with_capacity(chunks.len());
    for (part, chunk) in chunks.iter().enumerate() {
        let name = format!("{version:020}-{tag}-{part:04}.parquet");
        let bytes = encode(group, chunk)?;
        state.put_file(&Segment::relative(group, &name), bytes).await?;
        segments.push(Segment {
            name,
            version,
            rows: chunk.len() as u64,
        });
        progress.set(format!("membership: wrote part {} of {}", part + 1, chunks.len()));
        if !options.part_delay.is_zero() {
            tokio::time::sleep(options.part_delay).await;
        }
    }
    Ok(segments)
}

/// The membership rows the `segments` of Group `group` hold, folded: in
/// first-seen order, each row replaced by a later one for the same
/// membership (the one that ended it).
pub async fn read_rows(state: &StateStore, group: &str, segments: &[Segment]) -> Result<Vec<Member>, GroupError> {
    let mut rows: Vec<Member> = Vec::new();
    let mut position: HashMap<(MemberEntry, u64), usize> = HashMap::new();
    for segment in segments {
        let bytes = state.get_file(&Segment::relative(group, &segment.name)).await?;
        for row in decode(group, &segment.name, bytes)? {
            let key = (row.entry.clone(), row.added_in);
            match position.get(&key) {
                Some(&at) => rows[at] = row,
                None => {
                    position.insert(key, rows.len());
                    rows.push(row);
                }
            }
        }
    }
    Ok(rows)
}

/// Deletes segment files of Group `group` (best effort: a file left behind
/// is unreferenced, never read).
pub async fn delete_segments(state: &StateStore, group: &str, segments: &[Segment]) {
    for segment in segments {
        if let Err(e) = state.delete_file(&Segment::relative(group, &segment.name)).await {
            tracing::warn!(group, segment = %segment.name, error = %e, "cannot delete a superseded membership segment");
        }
    }
}

fn encode(group: &str, rows: &[Member]) -> Result<Vec<u8>, GroupError> {
    let batch = membership_batch(&[(group, rows)]).map_err(segment_error(group, "encoding"))?;
    let properties = crate::warehouse::parquet_file::writer_properties();
    let mut writer = ArrowWriter::try_new(Vec::new(), membership_schema(), Some(properties))
        .map_err(segment_error(group, "encoding"))?;
    writer.write(&batch).map_err(segment_error(group, "encoding"))?;
    writer.into_inner().map_err(segment_error(group, "encoding"))
}

fn decode(group: &str, name: &str, bytes: Bytes) -> Result<Vec<Member>, GroupError> {
    let context = format!("reading segment {name} of");
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|builder| builder.build())
        .map_err(segment_error(group, &context))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(segment_error(group, &context))?;
        rows.extend(members_of(&batch).ok_or_else(|| {
            segment_error(group, &context)(std::io::Error::other("the columns are not the membership schema"))
        })?);
    }
    Ok(rows)
}

/// The rows of a batch of [`membership_schema`].
fn members_of(batch: &RecordBatch) -> Option<Vec<Member>> {
    let text = |i: usize| batch.column(i).as_string_opt::<i32>();
    let (patient, start, end) = (text(1)?, text(2)?, text(3)?);
    let inactive = batch.column(4).as_boolean_opt()?;
    let added = batch.column(5).as_primitive_opt::<UInt64Type>()?;
    let removed = batch.column(6).as_primitive_opt::<UInt64Type>()?;
    let optional = |column: &datafusion::arrow::array::StringArray, i: usize| {
        column.is_valid(i).then(|| column.value(i).to_string())
    };
    Some(
        (0..batch.num_rows())
            .map(|i| Member {
                entry: MemberEntry {
                    patient: patient.value(i).to_string(),
                    period_start: optional(start, i),
                    period_end: optional(end, i),
                    inactive: inactive.value(i),
                },
                added_in: added.value(i),
                removed_in: removed.is_valid(i).then(|| removed.value(i)),
            })
            .collect(),
    )
}

fn segment_error<E: std::error::Error + Send + Sync + 'static>(
    group: &str,
    doing: &str,
) -> impl Fn(E) -> GroupError + use<E> {
    let path = format!("{MEMBERSHIP_DIR}/{group} ({doing})");
    move |e| {
        GroupError::Store(StoreError::Io {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    }
}
