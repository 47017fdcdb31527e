//! Reading source files into chunks of whole lines.

use std::io::{BufReader, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use tokio::runtime::Handle;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::IngestError;
use super::progress::Progress;
use super::source::{Compression, SourceFile};

/// Target size of a chunk handed to a worker. A line longer than this is read
/// whole into one larger chunk.
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Whole lines of one file.
#[derive(Debug)]
pub struct Chunk {
    /// Index of the file in load order.
    pub file: usize,
    /// 1-based number of the chunk's first line.
    pub first_line: u64,
    /// The lines, `\n`-separated.
    pub data: Vec<u8>,
}

/// What readers hand to workers.
#[derive(Debug)]
pub enum Work {
    /// Lines to parse.
    Lines(Chunk),
    /// The file cannot be read past `line` (corrupt or truncated compression).
    Unreadable {
        /// Index of the file.
        file: usize,
        /// The first line that could not be read.
        line: u64,
        /// The decoder's message.
        reason: String,
    },
}

struct CountingReader<'a, R> {
    inner: R,
    counter: &'a AtomicU64,
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// True for decoder errors that mean the data is bad (as opposed to the
/// storage failing), which a lenient load records instead of aborting on.
fn is_data_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput | std::io::ErrorKind::UnexpectedEof
    )
}

/// Streams file `index` into `tx` as chunks of whole lines. Returns early,
/// without error, when `cancel` is set.
pub fn read_file(
    index: usize,
    file: &SourceFile,
    handle: &Handle,
    tx: &SyncSender<Work>,
    cancel: &AtomicBool,
    progress: &Progress,
) -> Result<(), IngestError> {
    let get = handle
        .block_on(file.location.store.get(&file.path))
        .map_err(|e| file.location.error("reading", &file.path, e))?;
    let stream = get.into_stream().map_err(std::io::Error::other);
    let bridge = SyncIoBridge::new_with_handle(StreamReader::new(stream), handle.clone());
    let counted = CountingReader {
        inner: bridge,
        counter: &progress.stored_bytes,
    };
    let mut input: Box<dyn Read + '_> = match file.compression {
        Compression::None => Box::new(counted),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            256 * 1024,
            counted,
        ))),
    };
    let mut next_line: u64 = 1;
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_BYTES);
    let send = |chunk: Chunk| -> bool { !cancel.load(Ordering::Relaxed) && tx.send(Work::Lines(chunk)).is_ok() };
    loop {
        // Fill up to a chunk; a line longer than that doubles the buffer
        // instead of re-copying it for every read.
        let want = if buf.len() < CHUNK_BYTES {
            CHUNK_BYTES - buf.len()
        } else {
            buf.len()
        };
        let read = input.by_ref().take(want as u64).read_to_end(&mut buf);
        let n = match read {
            Ok(n) => n,
            Err(e) if is_data_error(&e) => {
                // Hand over the complete lines read so far, then report the rest.
                if let Some(end) = memchr::memrchr(b'\n', &buf) {
                    buf.truncate(end + 1);
                    let lines = memchr::memchr_iter(b'\n', &buf).count() as u64;
                    if !send(Chunk {
                        file: index,
                        first_line: next_line,
                        data: buf,
                    }) {
                        return Ok(());
                    }
                    next_line += lines;
                }
                let reason = format!("{e} (after {} lines)", next_line - 1);
                let _ = tx.send(Work::Unreadable {
                    file: index,
                    line: next_line,
                    reason,
                });
                return Ok(());
            }
            Err(source) => {
                return Err(IngestError::Read {
                    file: file.url.clone(),
                    source,
                });
            }
        };
        progress.ndjson_bytes.fetch_add(n as u64, Ordering::Relaxed);
        if n == 0 {
            // End of file: whatever is left is the last line (no trailing newline).
            if !buf.is_empty() {
                send(Chunk {
                    file: index,
                    first_line: next_line,
                    data: std::mem::take(&mut buf),
                });
            }
            return Ok(());
        }
        if let Some(end) = memchr::memrchr(b'\n', &buf) {
            let mut rest = Vec::with_capacity(CHUNK_BYTES.max(buf.len() - end));
            rest.extend_from_slice(&buf[end + 1..]);
            buf.truncate(end + 1);
            let lines = memchr::memchr_iter(b'\n', &buf).count() as u64;
            if !send(Chunk {
                file: index,
                first_line: next_line,
                data: std::mem::replace(&mut buf, rest),
            }) {
                return Ok(());
            }
            next_line += lines;
        }
    }
}
