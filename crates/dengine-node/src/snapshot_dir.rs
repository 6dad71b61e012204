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
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use dengine_core::LogIndex;
use dengine_core::SnapshotMeta;
use dengine_core::store::Snapshot;
use dengine_storage_common::codec::{decode_snapshot_meta, encode_snapshot_meta};

const MAGIC: &[u8; 8] = b"DSNAP001";
const SUFFIX: &str = ".dsnap";
const KEEP: usize = 2;

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

    /// Writes `snapshot` durably and removes older files beyond the newest [`KEEP`].
    pub(crate) async fn save(&self, snapshot: &Snapshot) -> Result<(), String> {
        // Without the `testing` feature the match has one arm.
        #[allow(clippy::infallible_destructuring_match)]
        let path = match &self.backend {
            Backend::Files(path) => path,
            #[cfg(feature = "testing")]
            Backend::Memory(memory) => {
                memory.save(snapshot.clone(), KEEP);
                return Ok(());
            }
        };
        let dir = path.clone();
        let snapshot = snapshot.clone();
        tokio::task::spawn_blocking(move || save_blocking(&dir, &snapshot))
            .await
            .map_err(|e| format!("snapshot writer task failed: {e}"))?
            .map_err(|e| format!("writing a snapshot into {}: {e}", path.display()))
    }

    /// The newest snapshot that passes its checks, if any, and the newer files that failed
    /// them (each with what is wrong).
    pub(crate) async fn load_latest(&self) -> Result<Loaded, String> {
        self.load_latest_after(0).await
    }

    /// [`load_latest`](Self::load_latest), but a file that covers no entry after `applied`
    /// (the state machine already holds its state) is checked only up to its metadata and
    /// returned without its data (see [`Loaded::data_skipped`]).
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

fn file_name(snapshot: &Snapshot) -> String {
    let id = snapshot.meta.last_included;
    format!("snapshot-{:020}-{:020}{SUFFIX}", id.index, id.term)
}

fn save_blocking(dir: &Path, snapshot: &Snapshot) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let name = file_name(snapshot);
    let tmp = dir.join(format!("{name}.tmp"));
    let meta = encode_snapshot_meta(&snapshot.meta);
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&(meta.len() as u32).to_be_bytes())?;
        f.write_all(&meta)?;
        f.write_all(&(snapshot.data.len() as u64).to_be_bytes())?;
        f.write_all(&crc32fast::hash(&snapshot.data).to_be_bytes())?;
        f.write_all(&snapshot.data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(&name))?;
    // Make the rename durable.
    fs::File::open(dir)?.sync_all()?;
    let mut names = snapshot_files(dir)?;
    names.sort();
    let old = names.len().saturating_sub(KEEP);
    for stale in &names[..old] {
        let _ = fs::remove_file(dir.join(stale));
    }
    Ok(())
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
    let mut names = snapshot_files(dir)?;
    names.sort();
    for name in names.iter().rev() {
        let path = dir.join(name);
        let meta_only = match read_meta(&path)? {
            Ok(meta) if meta.last_included.index <= applied => Ok(meta),
            Ok(_) => Err(None),
            Err(detail) => Err(Some(detail)),
        };
        let decoded = match meta_only {
            Ok(meta) => {
                loaded.data_skipped = true;
                Ok(Snapshot {
                    meta,
                    data: Bytes::new(),
                })
            }
            Err(Some(detail)) => Err(detail),
            Err(None) => decode(fs::read(&path)?),
        };
        match decoded {
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

/// The metadata of a snapshot file, checked up to there, and that the file is as long as its
/// header says (the data's checksum is not checked: the data is not read).
fn read_meta(path: &Path) -> io::Result<Result<SnapshotMeta, String>> {
    use std::io::Read as _;
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
    if file_len - header_len != data_len {
        return Ok(Err(format!(
            "data is {} bytes, expected {data_len}",
            file_len - header_len
        )));
    }
    Ok(Ok(meta))
}

fn decode(file: Vec<u8>) -> Result<Snapshot, String> {
    let file = Bytes::from(file);
    let bytes: &[u8] = &file;
    let rest = bytes.strip_prefix(MAGIC).ok_or("bad magic")?;
    let (len, rest) = split_u32(rest)?;
    let len = len as usize;
    if rest.len() < len {
        return Err("truncated metadata".into());
    }
    let (meta, rest) = rest.split_at(len);
    let meta = decode_snapshot_meta(meta).map_err(|e| e.to_string())?;
    if rest.len() < 12 {
        return Err("truncated header".into());
    }
    let (data_len, rest) = rest.split_at(8);
    let data_len = u64::from_be_bytes(data_len.try_into().map_err(|_| "bad length")?);
    let (crc, data) = split_u32(rest)?;
    if data.len() as u64 != data_len {
        return Err(format!("data is {} bytes, expected {data_len}", data.len()));
    }
    if crc32fast::hash(data) != crc {
        return Err("data checksum mismatch".into());
    }
    // The data without a copy: a slice of the file's buffer.
    let data = file.slice_ref(data);
    Ok(Snapshot { meta, data })
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
    use dengine_core::{EntryId, Membership, SnapshotMeta};

    fn snap(index: u64, data: &'static [u8]) -> Snapshot {
        Snapshot {
            meta: SnapshotMeta {
                last_included: EntryId::new(2, index),
                membership: Membership::new([1, 2, 3]).with_address(1, "a:1"),
            },
            data: Bytes::from_static(data),
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
        let newest = tmp.path().join(file_name(&snap(20, b"new")));
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
        let newest = tmp.path().join(file_name(&snap(20, b"new")));
        let bytes = fs::read(&newest).unwrap();
        fs::write(&newest, &bytes[..bytes.len() - 1]).unwrap();
        let loaded = dir.load_latest_after(20).await.unwrap();
        assert_eq!(loaded.damaged.len(), 1, "{loaded:?}");
        assert_eq!(loaded.snapshot.unwrap().meta, snap(10, b"").meta);
    }
}
