//! The WAL's settings, each a bound with a default.

/// Settings of a [`WalStore`](crate::WalStore). Every bound on memory and disk is one of these.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WalOptions {
    /// Size of a segment file, preallocated (written with zeros) when the segment is created.
    /// A batch larger than this gets a segment of its own, sized to fit. Default 64 MiB; at
    /// most 4 GiB (offsets are 32-bit).
    pub segment_bytes: u64,
    /// Whether `persist` with `must_sync`, `purge`, the snapshot calls and `sync` call
    /// `fdatasync`. Turning it off loses acknowledged writes on power loss (not on a crash of
    /// the process); only for tests and benchmarks, like the node's `storage.fsync`. Default
    /// true.
    pub fsync: bool,
    /// Bound on the bytes of recent entries kept in memory (by [`Entry::size_bytes`]); reads
    /// of older entries go to the segment files. The newest entry is always kept. Default
    /// 16 MiB.
    ///
    /// [`Entry::size_bytes`]: dengine_core::Entry::size_bytes
    pub cache_bytes: u64,
    /// How many purged segments are kept, renamed, for reuse as later segments (reusing one
    /// avoids writing a new segment's zeros, and an overwrite syncs faster than an append);
    /// segments purged beyond this are deleted. Default 4 (256 MiB of disk at the default
    /// segment size).
    pub max_spare_segments: usize,
}

/// The default segment size: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// The smallest segment the WAL creates.
pub(crate) const MIN_SEGMENT: u64 = 4096;

/// The default bound on cached entry bytes: 16 MiB.
pub const DEFAULT_CACHE_BYTES: u64 = 16 * 1024 * 1024;

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            fsync: true,
            cache_bytes: DEFAULT_CACHE_BYTES,
            max_spare_segments: 4,
        }
    }
}

impl WalOptions {
    /// Sets [`segment_bytes`](Self::segment_bytes).
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    /// Sets [`fsync`](Self::fsync).
    pub fn fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    /// Sets [`cache_bytes`](Self::cache_bytes).
    pub fn cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes;
        self
    }

    /// Sets [`max_spare_segments`](Self::max_spare_segments).
    pub fn max_spare_segments(mut self, count: usize) -> Self {
        self.max_spare_segments = count;
        self
    }

    /// The segment size actually used: at least 4 KiB, at most 4 GiB, a multiple of 4 KiB.
    pub(crate) fn segment_len(&self) -> u64 {
        self.segment_bytes
            .clamp(MIN_SEGMENT, u64::from(u32::MAX) & !4095)
            & !4095
    }
}
