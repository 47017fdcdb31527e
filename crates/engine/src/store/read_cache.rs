//! [`CachedStore`]: an object store that keeps recently read blocks of
//! warehouse files in memory, shared by every query session of the process.
//!
//! Warehouse data files are never changed once written (their names carry a
//! unique load token, and a file is only ever deleted, never rewritten), so a
//! block read once stays valid for the life of the process. A cohort reads a
//! few pages of a few index files; without the cache each request repeats
//! those reads: a blocking-pool hop and a file open per read locally, a GET
//! per read on S3. With it, a repeated or similar request reads memory.
//!
//! Only reads of objects under the store's data prefix (a warehouse's
//! `tables/`) are cached: a SQL session may also read files a user writes
//! and rewrites (`COPY … TO`), which must never be served from memory. Only
//! small ranged reads are cached (at most [`MAX_CACHED_READ`] bytes), so
//! large column chunks (an export's raw JSON) pass through without
//! evicting the index pages cohorts keep coming back to. Every other
//! operation goes to the wrapped store unchanged.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use datafusion::execution::cache::lru_queue::LruQueue;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    Attributes, CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    Result,
};

/// Bytes per cached block: large enough that the pages one scan reads from a
/// column chunk usually share a block, small enough that a miss reads little
/// beyond what was asked.
pub const BLOCK_BYTES: u64 = 128 * 1024;

/// Reads larger than this bypass the cache (bulk scans).
pub const MAX_CACHED_READ: u64 = 4 * 1024 * 1024;

/// Default memory the process-wide cache may hold.
pub const DEFAULT_CACHE_BYTES: usize = 256 * 1024 * 1024;

/// How many object sizes the cache remembers (they bound block reads at the
/// end of a file).
const MAX_SIZES: usize = 65_536;

/// The key of one block: the store (its URL), the object, the block number.
type BlockKey = (Arc<str>, Path, u64);

/// Blocks of immutable objects, least recently used evicted first once
/// their bytes exceed the capacity.
pub struct ReadCache {
    capacity: usize,
    state: Mutex<CacheState>,
}

struct CacheState {
    blocks: LruQueue<BlockKey, Bytes>,
    bytes: usize,
    sizes: LruQueue<(Arc<str>, Path), u64>,
    hits: u64,
    misses: u64,
}

impl fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (bytes, hits, misses) = self.usage();
        f.debug_struct("ReadCache")
            .field("capacity", &self.capacity)
            .field("bytes", &bytes)
            .field("hits", &hits)
            .field("misses", &misses)
            .finish()
    }
}

impl ReadCache {
    /// A cache holding at most `capacity` bytes of blocks (0 disables it).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            state: Mutex::new(CacheState {
                blocks: LruQueue::new(),
                bytes: 0,
                sizes: LruQueue::new(),
                hits: 0,
                misses: 0,
            }),
        }
    }

    /// The process-wide cache, sized by `FHIRLAKE_READ_CACHE_MB` (default
    /// [`DEFAULT_CACHE_BYTES`]; `0` turns caching off).
    pub fn shared() -> Arc<ReadCache> {
        static CACHE: OnceLock<Arc<ReadCache>> = OnceLock::new();
        CACHE
            .get_or_init(|| {
                let capacity = std::env::var("FHIRLAKE_READ_CACHE_MB")
                    .ok()
                    .and_then(|mb| mb.trim().parse::<usize>().ok())
                    .map_or(DEFAULT_CACHE_BYTES, |mb| mb.saturating_mul(1024 * 1024));
                Arc::new(ReadCache::new(capacity))
            })
            .clone()
    }

    /// (bytes held, block hits, block misses) so far.
    pub fn usage(&self) -> (usize, u64, u64) {
        let state = self.lock();
        (state.bytes, state.hits, state.misses)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // Nothing in the locked sections panics short of allocation failure;
        // if one did, the counters are kept with saturating arithmetic and
        // the next reads carry on.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that `location` in the store at `store_url` holds `size`
    /// bytes, so a [`CachedStore`] over that store does not ask the store.
    /// Only for objects that never change.
    pub fn note_size(&self, store_url: &str, location: &Path, size: u64) {
        self.remember_size(&Arc::from(store_url), location, size);
    }

    fn size(&self, store: &Arc<str>, location: &Path) -> Option<u64> {
        self.lock().sizes.get(&(store.clone(), location.clone())).copied()
    }

    fn remember_size(&self, store: &Arc<str>, location: &Path, size: u64) {
        let mut state = self.lock();
        state.sizes.put((store.clone(), location.clone()), size);
        while state.sizes.len() > MAX_SIZES {
            state.sizes.pop();
        }
    }

    /// The cached blocks among `blocks`, counting hits and misses.
    fn lookup(&self, store: &Arc<str>, location: &Path, blocks: &BTreeSet<u64>) -> HashMap<u64, Bytes> {
        let mut state = self.lock();
        let mut found = HashMap::with_capacity(blocks.len());
        for &block in blocks {
            if let Some(bytes) = state.blocks.get(&(store.clone(), location.clone(), block)) {
                found.insert(block, bytes.clone());
            }
        }
        state.hits += found.len() as u64;
        state.misses += (blocks.len() - found.len()) as u64;
        found
    }

    fn insert(&self, store: &Arc<str>, location: &Path, block: u64, bytes: Bytes) {
        if self.capacity == 0 {
            return;
        }
        let mut state = self.lock();
        let len = bytes.len();
        if let Some(old) = state.blocks.put((store.clone(), location.clone(), block), bytes) {
            state.bytes = state.bytes.saturating_sub(old.len());
        }
        state.bytes += len;
        while state.bytes > self.capacity {
            match state.blocks.pop() {
                Some((_, evicted)) => state.bytes = state.bytes.saturating_sub(evicted.len()),
                None => break,
            }
        }
    }
}

/// An object store whose small ranged reads of objects under one prefix go
/// through a [`ReadCache`].
#[derive(Debug)]
pub struct CachedStore {
    inner: Arc<dyn ObjectStore>,
    cache: Arc<ReadCache>,
    /// The store's URL: keys of different stores never collide in the
    /// shared cache.
    store: Arc<str>,
    /// Only objects under this prefix are cached: files that are never
    /// rewritten.
    immutable: Path,
}

impl CachedStore {
    /// `inner` (registered at `store_url`) with reads of objects under
    /// `immutable` cached in `cache`. Objects there must never be rewritten
    /// under the same key.
    pub fn new(inner: Arc<dyn ObjectStore>, store_url: &str, immutable: Path, cache: Arc<ReadCache>) -> Self {
        Self {
            inner,
            cache,
            store: Arc::from(store_url),
            immutable,
        }
    }

    fn caches(&self, location: &Path) -> bool {
        self.cache.capacity > 0 && location.prefix_matches(&self.immutable)
    }

    async fn object_size(&self, location: &Path) -> Result<u64> {
        if let Some(size) = self.cache.size(&self.store, location) {
            return Ok(size);
        }
        let size = self.inner.head(location).await?.size;
        self.cache.remember_size(&self.store, location, size);
        Ok(size)
    }

    /// Whether `range` is a read this cache serves: small, non-empty and
    /// within an object of `size` bytes (anything else goes to the wrapped
    /// store, which gives its own answer or error).
    fn cacheable(range: &Range<u64>, size: u64) -> bool {
        range.start < range.end && range.end <= size && range.end - range.start <= MAX_CACHED_READ
    }

    /// `ranges` of `location` (all cacheable, see [`Self::cacheable`]):
    /// blocks missing from the cache are read in one request to the
    /// wrapped store, consecutive ones as one range.
    async fn read_cached(&self, location: &Path, ranges: &[Range<u64>], size: u64) -> Result<Vec<Bytes>> {
        let needed: BTreeSet<u64> = ranges
            .iter()
            .flat_map(|r| r.start / BLOCK_BYTES..=(r.end - 1) / BLOCK_BYTES)
            .collect();
        let mut blocks = self.cache.lookup(&self.store, location, &needed);
        let mut spans: Vec<Range<u64>> = Vec::new();
        for &block in needed.iter().filter(|b| !blocks.contains_key(b)) {
            match spans.last_mut() {
                Some(span) if span.end == block => span.end = block + 1,
                _ => spans.push(block..block + 1),
            }
        }
        if !spans.is_empty() {
            let byte_spans: Vec<Range<u64>> = spans
                .iter()
                .map(|s| s.start * BLOCK_BYTES..(s.end * BLOCK_BYTES).min(size))
                .collect();
            let fetched = self.inner.get_ranges(location, &byte_spans).await?;
            for (span, bytes) in spans.iter().zip(fetched) {
                for block in span.clone() {
                    let offset = ((block - span.start) * BLOCK_BYTES) as usize;
                    let end = (offset + BLOCK_BYTES as usize).min(bytes.len());
                    if offset >= end {
                        break;
                    }
                    // A copy, so a cached block holds its own bytes and
                    // not the whole fetched span (which the counter would
                    // not see).
                    let piece = Bytes::copy_from_slice(&bytes[offset..end]);
                    self.cache.insert(&self.store, location, block, piece.clone());
                    blocks.insert(block, piece);
                }
            }
        }
        ranges.iter().map(|r| assemble(location, r, &blocks)).collect()
    }
}

/// The bytes of `range` from its blocks: a slice when it lies in one block,
/// else a copy of the pieces.
fn assemble(location: &Path, range: &Range<u64>, blocks: &HashMap<u64, Bytes>) -> Result<Bytes> {
    let first = range.start / BLOCK_BYTES;
    let last = (range.end - 1) / BLOCK_BYTES;
    let short = || object_store::Error::Generic {
        store: "CachedStore",
        source: format!("{location}: bytes {}..{} were not read", range.start, range.end).into(),
    };
    let piece = |block: u64| -> Result<(Bytes, usize, usize)> {
        let bytes = blocks.get(&block).ok_or_else(short)?;
        let block_start = block * BLOCK_BYTES;
        let from = range.start.max(block_start) - block_start;
        let to = range.end.min(block_start + BLOCK_BYTES) - block_start;
        if to as usize > bytes.len() {
            return Err(short());
        }
        Ok((bytes.clone(), from as usize, to as usize))
    };
    if first == last {
        let (bytes, from, to) = piece(first)?;
        return Ok(bytes.slice(from..to));
    }
    let mut out = BytesMut::with_capacity((range.end - range.start) as usize);
    for block in first..=last {
        let (bytes, from, to) = piece(block)?;
        out.extend_from_slice(&bytes[from..to]);
    }
    Ok(out.freeze())
}

impl fmt::Display for CachedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CachedStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for CachedStore {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let plain = options.if_match.is_none()
            && options.if_none_match.is_none()
            && options.if_modified_since.is_none()
            && options.if_unmodified_since.is_none()
            && options.version.is_none()
            && !options.head;
        let range = match (&options.range, plain && self.caches(location)) {
            (Some(GetRange::Bounded(range)), true) => range.clone(),
            _ => return self.inner.get_opts(location, options).await,
        };
        let size = self.object_size(location).await?;
        if !Self::cacheable(&range, size) {
            return self.inner.get_opts(location, options).await;
        }
        let bytes = self.read_cached(location, std::slice::from_ref(&range), size).await?;
        let payload = futures::stream::iter(bytes.into_iter().map(Ok)).boxed();
        Ok(GetResult {
            payload: GetResultPayload::Stream(payload),
            meta: ObjectMeta {
                location: location.clone(),
                // Files are immutable: the time is not known here and
                // nothing downstream of a ranged read uses it.
                last_modified: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
                size,
                e_tag: None,
                version: None,
            },
            range,
            attributes: Attributes::default(),
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        if !self.caches(location) || ranges.is_empty() {
            return self.inner.get_ranges(location, ranges).await;
        }
        let size = self.object_size(location).await?;
        let (small, large): (Vec<usize>, Vec<usize>) =
            (0..ranges.len()).partition(|&i| Self::cacheable(&ranges[i], size));
        if large.is_empty() {
            return self.read_cached(location, ranges, size).await;
        }
        // Large (or invalid) ranges go to the wrapped store, small ones
        // through the cache; answers in the order asked.
        let pick = |indices: &[usize]| indices.iter().map(|&i| ranges[i].clone()).collect::<Vec<_>>();
        let direct = self.inner.get_ranges(location, &pick(&large)).await?;
        let cached = if small.is_empty() {
            Vec::new()
        } else {
            self.read_cached(location, &pick(&small), size).await?
        };
        let mut answers: Vec<Option<Bytes>> = vec![None; ranges.len()];
        for (i, bytes) in large.into_iter().zip(direct).chain(small.into_iter().zip(cached)) {
            answers[i] = Some(bytes);
        }
        answers
            .into_iter()
            .map(|b| {
                b.ok_or_else(|| object_store::Error::Generic {
                    store: "CachedStore",
                    source: format!("{location}: a range was not answered").into(),
                })
            })
            .collect()
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(&self, prefix: Option<&Path>, offset: &Path) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    /// An object of `len` bytes whose byte at offset i is `i % 251`.
    async fn store_with_object(len: usize) -> (Arc<InMemory>, Path, Vec<u8>) {
        let inner = Arc::new(InMemory::new());
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let path = Path::from("tables/index/part.parquet");
        inner.put(&path, PutPayload::from(data.clone())).await.expect("put");
        (inner, path, data)
    }

    #[tokio::test]
    async fn cached_reads_equal_the_stores_and_repeat_from_memory() {
        let len = 3 * BLOCK_BYTES as usize + 777;
        let (inner, path, data) = store_with_object(len).await;
        let cache = Arc::new(ReadCache::new(64 * 1024 * 1024));
        let store = CachedStore::new(inner.clone(), "memory:///", Path::from("tables"), cache.clone());
        let len = len as u64;
        let ranges = [
            0..10,
            BLOCK_BYTES - 5..BLOCK_BYTES + 5,
            BLOCK_BYTES..2 * BLOCK_BYTES,
            10..3 * BLOCK_BYTES + 100,
            len - 777..len,
            len - 1..len,
        ];
        for range in &ranges {
            let got = store.get_range(&path, range.clone()).await.expect("get_range");
            assert_eq!(&got[..], &data[range.start as usize..range.end as usize], "{range:?}");
        }
        let all = store.get_ranges(&path, &ranges).await.expect("get_ranges");
        for (range, got) in ranges.iter().zip(&all) {
            assert_eq!(&got[..], &data[range.start as usize..range.end as usize], "{range:?}");
        }
        let (bytes, hits, misses) = cache.usage();
        assert_eq!(bytes, len as usize, "every block held once");
        assert_eq!(misses, 4, "each of the 4 blocks read from the store once");
        assert!(hits > 0);

        // Served from memory: the object can go and the blocks still read.
        inner.delete(&path).await.expect("delete");
        let again = store.get_range(&path, 5..BLOCK_BYTES + 9).await.expect("cached");
        assert_eq!(&again[..], &data[5..BLOCK_BYTES as usize + 9]);
    }

    #[tokio::test]
    async fn reads_past_the_end_and_large_reads_behave_like_the_store() {
        let len = MAX_CACHED_READ as usize + BLOCK_BYTES as usize + 10;
        let (inner, path, data) = store_with_object(len).await;
        let cache = Arc::new(ReadCache::new(64 * 1024 * 1024));
        let store = CachedStore::new(inner.clone(), "memory:///", Path::from("tables"), cache.clone());
        let len = len as u64;
        // A bounded range past the end is clamped, as by the wrapped store.
        let clamped = store.get_range(&path, len - 4..len + 100).await.expect("clamped");
        assert_eq!(&clamped[..], &data[len as usize - 4..]);
        // A start past the end is the store's error.
        assert!(store.get_range(&path, len + 1..len + 5).await.is_err());
        // A missing object is the store's not-found error.
        let missing = store.get_range(&Path::from("tables/nope"), 0..4).await;
        assert!(
            matches!(missing, Err(object_store::Error::NotFound { .. })),
            "{missing:?}"
        );
        // A read larger than MAX_CACHED_READ passes through.
        let large = 0..MAX_CACHED_READ + 1;
        let got = store.get_range(&path, large.clone()).await.expect("large");
        assert_eq!(&got[..], &data[..large.end as usize]);
        assert_eq!(cache.usage().0, 0, "nothing was cached");
        // Mixed: the large range passes through, the small ones are cached,
        // and the answers come in the order asked.
        let ranges = [5..9, large.clone(), len - 3..len, 0..1];
        let got = store.get_ranges(&path, &ranges).await.expect("mixed");
        for (range, bytes) in ranges.iter().zip(&got) {
            assert_eq!(&bytes[..], &data[range.start as usize..range.end as usize], "{range:?}");
        }
        assert_eq!(
            cache.usage().2,
            2,
            "the blocks of the small ranges: the first and the last"
        );
    }

    #[tokio::test]
    async fn objects_outside_the_immutable_prefix_are_never_cached() {
        let inner = Arc::new(InMemory::new());
        let path = Path::from("exports/out.parquet");
        inner.put(&path, PutPayload::from(vec![1u8; 100])).await.expect("put");
        let cache = Arc::new(ReadCache::new(64 * 1024 * 1024));
        let store = CachedStore::new(inner.clone(), "memory:///", Path::from("tables"), cache.clone());
        assert_eq!(&store.get_range(&path, 0..4).await.expect("read")[..], &[1, 1, 1, 1]);
        // Rewritten under the same key: the new bytes are read.
        inner
            .put(&path, PutPayload::from(vec![2u8; 100]))
            .await
            .expect("rewrite");
        assert_eq!(&store.get_range(&path, 0..4).await.expect("read")[..], &[2, 2, 2, 2]);
        let got = store.get_ranges(&path, &[0..2, 50..52]).await.expect("ranges");
        assert_eq!(
            got.iter().map(|b| b.to_vec()).collect::<Vec<_>>(),
            [vec![2, 2], vec![2, 2]]
        );
        assert_eq!(cache.usage(), (0, 0, 0));
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_capacity() {
        let len = 8 * BLOCK_BYTES as usize;
        let (inner, path, data) = store_with_object(len).await;
        let cache = Arc::new(ReadCache::new(3 * BLOCK_BYTES as usize));
        let store = CachedStore::new(inner, "memory:///", Path::from("tables"), cache.clone());
        for block in 0..8u64 {
            let range = block * BLOCK_BYTES..block * BLOCK_BYTES + 16;
            let got = store.get_range(&path, range.clone()).await.expect("read");
            assert_eq!(&got[..], &data[range.start as usize..range.end as usize]);
        }
        assert_eq!(cache.usage().0, 3 * BLOCK_BYTES as usize, "the 3 most recent blocks");
        let (_, hits_before, _) = cache.usage();
        store
            .get_range(&path, 7 * BLOCK_BYTES..7 * BLOCK_BYTES + 1)
            .await
            .expect("read");
        assert_eq!(cache.usage().1, hits_before + 1, "the newest block is still held");
    }
}
