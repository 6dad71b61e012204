//! [`SnapshotDir`]: the newest state-machine snapshots kept as files, so that a state machine
//! that is not durable can be restored after a restart even when the log behind its snapshot
//! was compacted away.
//!
//! One file per snapshot, `snapshot-<index>-<term>.dsnap`, written to a temporary name,
//! synced, then renamed (so a crash leaves either the old set or the new file complete):
//!
//! ```text
//! "DSNAP001" | u32 meta_len | meta record (dengine_storage_common::codec, with its CRC) |
//! u64 data_len | u32 crc32(data) | data
//! ```
//!
//! The two newest files are kept; a file that fails its checks is skipped for an older one.

use std::fs;
use std::io::{self, BufWriter, Read as _, Seek as _, Write};
use std::path::{Path, PathBuf};

use dengine_core::LogIndex;
use dengine_core::SnapshotMeta;
use dengine_core::store::{Snapshot, SnapshotData};
use dengine_storage_common::codec::{decode_snapshot_meta, encode_snapshot_meta};
use dengine_storage_common::{FileRegion, crc32_of};

const MAGIC: &[u8; 8] = b"DSNAP001";
const SUFFIX: &str = ".dsnap";
/// Files being written end so; one left by a crash is removed at the next start.
const TMP_SUFFIX: &str = ".tmp";
const KEEP: usize = 2;
/// The pieces a snapshot's data is checked and copied in.
const PIECE: usize = 1 << 20;

/// Where the newest snapshots are kept: a directory of files, or (feature `testing`) memory
/// that outlives the node, for deterministic simulation.
#[derive(Clone, Debug)]
pub(crate) struct SnapshotDir {
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    Files(PathBuf),
    #[cfg(feature = "testing")]
    Memory(crate::testing::MemorySnapshots),
}

impl SnapshotDir {
    pub(crate) fn new(path: PathBuf) -> Self {
        SnapshotDir {
            backend: Backend::Files(path),
        }
    }

    #[cfg(feature = "testing")]
    pub(crate) fn memory(snapshots: crate::testing::MemorySnapshots) -> Self {
        SnapshotDir {
            backend: Backend::Memory(snapshots),
        }
    }

    /// A writer of a new snapshot file for `meta` (blocking I/O): the state machine writes
    /// its data into it, and [`SnapshotWriter::finish`] makes the file durable.
    pub(crate) fn writer(&self, meta: SnapshotMeta) -> io::Result<SnapshotWriter> {
        let sink = match &self.backend {
            Backend::Files(dir) => Sink::file(dir, &meta)?,
            #[cfg(feature = "testing")]
            Backend::Memory(memory) => Sink::Memory {
                buf: Vec::new(),
                keep_in: Some(memory.clone()),
            },
        };
        Ok(SnapshotWriter::new(meta, sink))
    }

    /// Writes `snapshot` durably (its data read piece by piece) and removes older files
    /// beyond the newest [`KEEP`]. Returns the snapshot as saved: its data now read from the
    /// new file.
    pub(crate) async fn save(&self, snapshot: &Snapshot) -> Result<Snapshot, String> {
        let describe = |e: io::Error| format!("writing a snapshot into {}: {e}", self.describe());
        // Memory for deterministic simulation: no blocking pool, whose threads would make
        // the moment the save completes differ from run to run.
        #[cfg(feature = "testing")]
        if let Backend::Memory(_) = &self.backend {
            return self.save_blocking(snapshot).map_err(describe);
        }
        let dir = self.clone();
        let snapshot = snapshot.clone();
        tokio::task::spawn_blocking(move || dir.save_blocking(&snapshot))
            .await
            .map_err(|e| format!("snapshot writer task failed: {e}"))?
            .map_err(describe)
    }

    fn save_blocking(&self, snapshot: &Snapshot) -> io::Result<Snapshot> {
        let mut writer = self.writer(snapshot.meta.clone())?;
        io::copy(&mut snapshot.data.reader(), &mut writer)?;
        writer.finish()
    }

    fn describe(&self) -> String {
        match &self.backend {
            Backend::Files(path) => path.display().to_string(),
            #[cfg(feature = "testing")]
            Backend::Memory(_) => "memory".into(),
        }
    }

    /// The newest snapshot that passes its checks, if any, and the newer files that failed
    /// them (each with what is wrong).
    pub(crate) async fn load_latest(&self) -> Result<Loaded, String> {
        self.load_latest_after(0).await
    }

    /// [`load_latest`](Self::load_latest), but a file that covers no entry after `applied`
    /// (the state machine already holds its state) is checked only up to its metadata and
    /// returned without its data (see [`Loaded::data_skipped`]). A snapshot's data is not
    /// read into memory: it is checked piece by piece and read from the file when needed.
    pub(crate) async fn load_latest_after(&self, applied: LogIndex) -> Result<Loaded, String> {
        // Without the `testing` feature the match has one arm.
        #[allow(clippy::infallible_destructuring_match)]
        let path = match &self.backend {
            Backend::Files(path) => path,
            #[cfg(feature = "testing")]
            Backend::Memory(memory) => {
                return Ok(Loaded {
                    snapshot: memory.latest(),
                    damaged: Vec::new(),
                    data_skipped: false,
                });
            }
        };
        let dir = path.clone();
        tokio::task::spawn_blocking(move || load_blocking(&dir, applied))
            .await
            .map_err(|e| format!("snapshot reader task failed: {e}"))?
            .map_err(|e| format!("reading snapshots in {}: {e}", path.display()))
    }
}

/// A snapshot being written (see [`SnapshotDir::writer`]): counts and checksums what goes
/// through. Dropped unfinished, it leaves nothing behind.
pub(crate) struct SnapshotWriter {
    meta: SnapshotMeta,
    sink: Sink,
    len: u64,
    crc: crc32fast::Hasher,
}

enum Sink {
    /// A temporary file in the directory; `header_len` bytes of header come before the data.
    File {
        dir: PathBuf,
        tmp: PathBuf,
        name: String,
        file: Option<BufWriter<fs::File>>,
        header_len: u64,
    },
    /// Memory: a node that keeps no snapshot files, or (feature `testing`) keeps them in
    /// [`MemorySnapshots`](crate::testing::MemorySnapshots).
    Memory {
        buf: Vec<u8>,
        #[cfg(feature = "testing")]
        keep_in: Option<crate::testing::MemorySnapshots>,
    },
}

impl Sink {
    fn file(dir: &Path, meta: &SnapshotMeta) -> io::Result<Sink> {
        fs::create_dir_all(dir)?;
        let id = meta.last_included;
        let name = format!("snapshot-{:020}-{:020}{SUFFIX}", id.index, id.term);
        // Unique, so two writers of the same snapshot (one built, one received) never share
        // a temporary file.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!("{name}.{n}{TMP_SUFFIX}"));
        let encoded = encode_snapshot_meta(meta);
        let mut file = BufWriter::with_capacity(PIECE, fs::File::create(&tmp)?);
        file.write_all(MAGIC)?;
        file.write_all(&(encoded.len() as u32).to_be_bytes())?;
        file.write_all(&encoded)?;
        // Length and checksum, filled in by `finish`.
        file.write_all(&[0u8; 12])?;
        Ok(Sink::File {
            dir: dir.to_path_buf(),
            tmp,
            name,
            file: Some(file),
            header_len: (MAGIC.len() + 4 + encoded.len() + 12) as u64,
        })
    }
}

impl SnapshotWriter {
    fn new(meta: SnapshotMeta, sink: Sink) -> Self {
        SnapshotWriter {
            meta,
            sink,
            len: 0,
            crc: crc32fast::Hasher::new(),
        }
    }

    /// A writer into memory, for a node that keeps no snapshot files.
    pub(crate) fn in_memory(meta: SnapshotMeta) -> Self {
        SnapshotWriter::new(
            meta,
            Sink::Memory {
                buf: Vec::new(),
                #[cfg(feature = "testing")]
                keep_in: None,
            },
        )
    }

    /// Completes the snapshot (blocking I/O): a file gets its length and checksum, is synced
    /// and renamed into place, the directory is synced, and files beyond the newest [`KEEP`]
    /// are removed. Returns the snapshot, its data read from where it now lies.
    pub(crate) fn finish(mut self) -> io::Result<Snapshot> {
        let crc = std::mem::take(&mut self.crc).finalize();
        let data = match &mut self.sink {
            Sink::File {
                dir,
                tmp,
                name,
                file,
                header_len,
            } => {
                let Some(file) = file.take() else {
                    return Err(io::Error::other("the snapshot file was already finished"));
                };
                let mut file = file.into_inner().map_err(|e| e.into_error())?;
                file.seek(io::SeekFrom::Start(*header_len - 12))?;
                file.write_all(&self.len.to_be_bytes())?;
                file.write_all(&crc.to_be_bytes())?;
                file.sync_all()?;
                drop(file);
                let path = dir.join(&*name);
                fs::rename(&*tmp, &path)?;
                // Make the rename durable.
                fs::File::open(&*dir)?.sync_all()?;
                let mut names = snapshot_files(dir)?;
                names.sort();
                let old = names.len().saturating_sub(KEEP);
                for stale in &names[..old] {
                    let _ = fs::remove_file(dir.join(stale));
                }
                FileRegion::open(&path, *header_len, self.len)?.into_data()
            }
            Sink::Memory { buf, .. } => SnapshotData::from(std::mem::take(buf)),
        };
        let snapshot = Snapshot {
            meta: self.meta.clone(),
            data,
        };
        #[cfg(feature = "testing")]
        if let Sink::Memory {
            keep_in: Some(memory),
            ..
        } = &self.sink
        {
            memory.save(snapshot.clone(), KEEP);
        }
        Ok(snapshot)
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.sink {
            Sink::File { file: Some(f), .. } => f.write(buf)?,
            Sink::File { file: None, .. } => {
                return Err(io::Error::other("the snapshot file was already finished"));
            }
            Sink::Memory { buf: out, .. } => {
                out.extend_from_slice(buf);
                buf.len()
            }
        };
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            Sink::File { file: Some(f), .. } => f.flush(),
            _ => Ok(()),
        }
    }
}

impl Drop for SnapshotWriter {
    /// An unfinished writer, or one whose `finish` failed, removes its temporary file (after
    /// a successful `finish` it was renamed: nothing is left to remove).
    fn drop(&mut self) {
        if let Sink::File { tmp, .. } = &self.sink {
            let _ = fs::remove_file(tmp);
        }
    }
}

fn snapshot_files(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("snapshot-") && name.ends_with(SUFFIX) {
            names.push(name);
        }
    }
    Ok(names)
}

/// What [`SnapshotDir::load_latest`] found.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// The newest snapshot that passed its checks.
    pub(crate) snapshot: Option<Snapshot>,
    /// Newer files that failed them: path and what is wrong.
    pub(crate) damaged: Vec<(PathBuf, String)>,
    /// `snapshot` holds only the metadata (its data was not needed, and not read).
    pub(crate) data_skipped: bool,
}

impl Loaded {
    /// The damaged files, for an error message.
    pub(crate) fn describe_damaged(&self) -> String {
        self.damaged
            .iter()
            .map(|(path, detail)| format!("{} ({detail})", path.display()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn load_blocking(dir: &Path, applied: LogIndex) -> io::Result<Loaded> {
    let mut loaded = Loaded::default();
    if !dir.exists() {
        return Ok(loaded);
    }
    // Snapshots a crash interrupted: nothing writes them any more (this runs at start).
    for entry in fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("snapshot-") && name.ends_with(TMP_SUFFIX) {
            let _ = fs::remove_file(entry.path());
        }
    }
    let mut names = snapshot_files(dir)?;
    names.sort();
    for name in names.iter().rev() {
        let path = dir.join(name);
        let checked = match read_header(&path)? {
            Ok(header) if header.meta.last_included.index <= applied => {
                loaded.data_skipped = true;
                Ok(Snapshot {
                    meta: header.meta,
                    data: SnapshotData::empty(),
                })
            }
            Ok(header) => check_data(&path, header),
            Err(detail) => Err(detail),
        };
        match checked {
            Ok(snapshot) => {
                loaded.snapshot = Some(snapshot);
                break;
            }
            Err(detail) => {
                tracing::warn!(
                    path = %path.display(),
                    %detail,
                    "the snapshot file is damaged; trying an older one"
                );
                loaded.damaged.push((path, detail));
            }
        }
    }
    Ok(loaded)
}

/// A snapshot file's header, checked.
struct Header {
    meta: SnapshotMeta,
    data_offset: u64,
    data_len: u64,
    crc: u32,
}

/// The header of a snapshot file, checked up to there, and that the file is as long as its
/// header says (the data's checksum is not checked: the data is not read).
fn read_header(path: &Path) -> io::Result<Result<Header, String>> {
    let mut file = fs::File::open(path)?;
    let file_len = file.metadata()?.len();
    let mut head = vec![0u8; MAGIC.len() + 4];
    if file.read_exact(&mut head).is_err() {
        return Ok(Err("truncated header".into()));
    }
    let Some(rest) = head.strip_prefix(MAGIC) else {
        return Ok(Err("bad magic".into()));
    };
    let meta_len = match split_u32(rest) {
        Ok((len, _)) => len as u64,
        Err(e) => return Ok(Err(e)),
    };
    let header_len = MAGIC.len() as u64 + 4 + meta_len + 12;
    if file_len < header_len {
        return Ok(Err("truncated metadata".into()));
    }
    let mut rest = vec![0u8; (meta_len + 12) as usize];
    file.read_exact(&mut rest)?;
    let (meta, sizes) = rest.split_at(meta_len as usize);
    let meta = match decode_snapshot_meta(meta) {
        Ok(meta) => meta,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let data_len = u64::from_be_bytes(sizes[..8].try_into().unwrap_or([0xff; 8]));
    let crc = match split_u32(&sizes[8..]) {
        Ok((crc, _)) => crc,
        Err(e) => return Ok(Err(e)),
    };
    if file_len - header_len != data_len {
        return Ok(Err(format!(
            "data is {} bytes, expected {data_len}",
            file_len - header_len
        )));
    }
    Ok(Ok(Header {
        meta,
        data_offset: header_len,
        data_len,
        crc,
    }))
}

/// The snapshot of a file whose header passed: its data checked against the checksum piece by
/// piece, then left in the file (read again when needed).
fn check_data(path: &Path, header: Header) -> Result<Snapshot, String> {
    let region = FileRegion::open(path, header.data_offset, header.data_len)
        .map_err(|e| e.to_string())?
        .into_data();
    if crc32_of(&region, PIECE).map_err(|e| e.to_string())? != header.crc {
        return Err("data checksum mismatch".into());
    }
    Ok(Snapshot {
        meta: header.meta,
        data: region,
    })
}

fn split_u32(bytes: &[u8]) -> Result<(u32, &[u8]), String> {
    if bytes.len() < 4 {
        return Err("truncated".into());
    }
    let (head, rest) = bytes.split_at(4);
    let value = u32::from_be_bytes(head.try_into().map_err(|_| "bad u32")?);
    Ok((value, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use dengine_core::{EntryId, Membership, SnapshotMeta};

    fn file_name(index: u64) -> String {
        format!("snapshot-{index:020}-{:020}{SUFFIX}", 2)
    }

    fn snap(index: u64, data: &'static [u8]) -> Snapshot {
        Snapshot {
            meta: SnapshotMeta {
                last_included: EntryId::new(2, index),
                membership: Membership::new([1, 2, 3]).with_address(1, "a:1"),
            },
            data: SnapshotData::from(Bytes::from_static(data)),
        }
    }

    #[tokio::test]
    async fn saves_loads_and_keeps_the_newest_two() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::new(tmp.path().join("snaps"));
        assert_eq!(dir.load_latest().await.unwrap().snapshot, None);
        for i in 1..=4 {
            dir.save(&snap(i * 10, b"state")).await.unwrap();
        }
        assert_eq!(
            dir.load_latest().await.unwrap().snapshot,
            Some(snap(40, b"state"))
        );
        assert_eq!(snapshot_files(&tmp.path().join("snaps")).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_damaged_file_falls_back_to_the_older_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::new(tmp.path().to_path_buf());
        dir.save(&snap(10, b"old")).await.unwrap();
        dir.save(&snap(20, b"new")).await.unwrap();
        let newest = tmp.path().join(file_name(20));
        let mut bytes = fs::read(&newest).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&newest, bytes).unwrap();
        let loaded = dir.load_latest().await.unwrap();
        assert_eq!(loaded.snapshot, Some(snap(10, b"old")));
        assert_eq!(loaded.damaged.len(), 1);
        assert_eq!(loaded.damaged[0].0, newest, "the damaged file is named");
        assert!(loaded.describe_damaged().contains("checksum"), "{loaded:?}");
    }

    #[tokio::test]
    async fn a_snapshot_the_state_machine_covers_is_read_only_up_to_its_metadata() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::new(tmp.path().to_path_buf());
        dir.save(&snap(10, b"old")).await.unwrap();
        dir.save(&snap(20, b"new")).await.unwrap();
        let loaded = dir.load_latest_after(20).await.unwrap();
        assert!(loaded.data_skipped);
        let found = loaded.snapshot.unwrap();
        assert_eq!(found.meta, snap(20, b"").meta);
        assert!(found.data.is_empty(), "the data is not read");
        // Newer than what the state machine holds: read whole, as before.
        let loaded = dir.load_latest_after(19).await.unwrap();
        assert!(!loaded.data_skipped);
        assert_eq!(loaded.snapshot, Some(snap(20, b"new")));
        // A covered file cut short is still found damaged (by its length), and the older one
        // is used.
        let newest = tmp.path().join(file_name(20));
        let bytes = fs::read(&newest).unwrap();
        fs::write(&newest, &bytes[..bytes.len() - 1]).unwrap();
        let loaded = dir.load_latest_after(20).await.unwrap();
        assert_eq!(loaded.damaged.len(), 1, "{loaded:?}");
        assert_eq!(loaded.snapshot.unwrap().meta, snap(10, b"").meta);
    }

    #[test]
    fn a_written_snapshot_is_read_from_its_file_and_an_unfinished_one_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::new(tmp.path().to_path_buf());
        let meta = snap(30, b"").meta;
        let mut writer = dir.writer(meta.clone()).unwrap();
        for piece in [&b"one "[..], b"two ", b"three"] {
            writer.write_all(piece).unwrap();
        }
        let written = writer.finish().unwrap();
        assert!(
            matches!(written.data, SnapshotData::Source(_)),
            "read from the file, not held in memory: {:?}",
            written.data
        );
        assert_eq!(written.data.to_bytes().unwrap(), &b"one two three"[..]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let loaded = rt.block_on(dir.load_latest()).unwrap().snapshot.unwrap();
        assert_eq!(loaded.meta, meta);
        assert_eq!(loaded.data.to_bytes().unwrap(), &b"one two three"[..]);
        // A file a crash left half written is removed at the next start.
        fs::write(tmp.path().join(format!("{}.7.tmp", file_name(35))), b"half").unwrap();
        rt.block_on(dir.load_latest()).unwrap();
        // A build that fails halfway (the writer is dropped) leaves no file.
        let mut writer = dir.writer(snap(40, b"").meta).unwrap();
        writer.write_all(b"half").unwrap();
        drop(writer);
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(file_name(30))]);
    }
}
