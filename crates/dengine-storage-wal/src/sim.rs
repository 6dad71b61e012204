//! A file system in memory that models the page cache, for the power-loss test.
//!
//! Every file has the bytes the disk holds (`durable`) and the bytes a reader sees (`now`),
//! plus the writes since its last `sync_data`, in order. Directory changes (create, rename,
//! remove) are pending in the same way until `sync_dir`. [`SimFs::power_loss`] returns the
//! file system as it comes back after the power fails: for each file a random prefix of its
//! unsynced writes reached the disk and the next one may be torn (a random prefix of its
//! bytes), a random prefix of the unsynced directory changes survived, and files no name
//! points to are gone. [`SimFs::fail_after`] makes the power fail in the middle of an
//! operation: after that many more operations, every call fails.
// Test support: a broken invariant of the model itself should stop the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use crate::vfs::{DirItem, VFile, Vfs};

/// SplitMix64: one seed decides everything.
#[derive(Clone, Debug)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 if `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Debug)]
enum FileOp {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Clone, Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    now: Vec<u8>,
    pending: Vec<FileOp>,
}

fn apply(bytes: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::Write { offset, data } => {
            let end = *offset as usize + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[*offset as usize..end].copy_from_slice(data);
        }
        FileOp::SetLen(len) => bytes.resize(*len as usize, 0),
    }
}

#[derive(Clone, Debug)]
enum DirOp {
    Link(PathBuf, u64),
    Rename(PathBuf, PathBuf),
    Unlink(PathBuf),
}

#[derive(Debug, Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    dir_ops: Vec<DirOp>,
    /// Operations left before the power fails (`None`: it does not).
    fail_after: Option<u64>,
    /// Syncs report success and make nothing durable (a disk that ignores them), for the test
    /// that shows the power-loss check can fail.
    ignore_syncs: bool,
}

impl State {
    /// Counts one operation; fails once the power is gone.
    fn tick(&mut self) -> io::Result<()> {
        match &mut self.fail_after {
            Some(0) => Err(io::Error::other("simulated power loss")),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn dead(&self) -> io::Result<()> {
        if self.fail_after == Some(0) {
            Err(io::Error::other("simulated power loss"))
        } else {
            Ok(())
        }
    }
}

fn apply_dir(names: &mut BTreeMap<PathBuf, u64>, op: &DirOp) {
    match op {
        DirOp::Link(path, ino) => {
            names.insert(path.clone(), *ino);
        }
        DirOp::Rename(from, to) => {
            if let Some(ino) = names.remove(from) {
                names.insert(to.clone(), ino);
            }
        }
        DirOp::Unlink(path) => {
            names.remove(path);
        }
    }
}

/// The simulated file system; clones share it.
#[derive(Clone, Debug, Default)]
pub(crate) struct SimFs {
    state: Arc<Mutex<State>>,
}

/// An open simulated file.
#[derive(Debug)]
pub(crate) struct SimFile {
    state: Arc<Mutex<State>>,
    ino: u64,
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl SimFs {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// The power fails after `ops` more operations.
    pub(crate) fn fail_after(&self, ops: u64) {
        self.lock().fail_after = Some(ops);
    }

    /// From now on, syncs report success and make nothing durable.
    pub(crate) fn ignore_syncs(&self) {
        self.lock().ignore_syncs = true;
    }

    /// The file system as it is after the power comes back (see the module docs).
    pub(crate) fn power_loss(&self, rng: &mut Rng) -> SimFs {
        let s = self.lock();
        let mut names = s.durable_names.clone();
        let keep = rng.below(s.dir_ops.len() as u64 + 1) as usize;
        for op in &s.dir_ops[..keep] {
            apply_dir(&mut names, op);
        }
        let mut inodes = HashMap::new();
        for ino in names.values() {
            let Some(inode) = s.inodes.get(ino) else {
                continue;
            };
            let mut bytes = inode.durable.clone();
            let kept = rng.below(inode.pending.len() as u64 + 1) as usize;
            for op in &inode.pending[..kept] {
                apply(&mut bytes, op);
            }
            if let Some(FileOp::Write { offset, data }) = inode.pending.get(kept)
                && rng.chance(50)
            {
                // A torn write: only a prefix of it reached the disk.
                let len = rng.below(data.len() as u64) as usize;
                apply(
                    &mut bytes,
                    &FileOp::Write {
                        offset: *offset,
                        data: data[..len].to_vec(),
                    },
                );
            }
            inodes.insert(
                *ino,
                Inode {
                    durable: bytes.clone(),
                    now: bytes,
                    pending: Vec::new(),
                },
            );
        }
        SimFs {
            state: Arc::new(Mutex::new(State {
                inodes,
                next_ino: s.next_ino,
                durable_names: names.clone(),
                names,
                dir_ops: Vec::new(),
                fail_after: None,
                ignore_syncs: s.ignore_syncs,
            })),
        }
    }
}

impl Vfs for SimFs {
    type File = SimFile;

    fn open(&self, path: &Path) -> io::Result<SimFile> {
        let s = self.lock();
        s.dead()?;
        let ino = *s.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(SimFile {
            state: Arc::clone(&self.state),
            ino,
        })
    }

    fn create(&self, path: &Path) -> io::Result<SimFile> {
        let mut s = self.lock();
        s.tick()?;
        s.next_ino += 1;
        let ino = s.next_ino;
        s.inodes.insert(ino, Inode::default());
        s.names.insert(path.to_path_buf(), ino);
        s.dir_ops.push(DirOp::Link(path.to_path_buf(), ino));
        Ok(SimFile {
            state: Arc::clone(&self.state),
            ino,
        })
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<DirItem>> {
        let s = self.lock();
        s.dead()?;
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name())
            .map(|name| DirItem {
                name: name.to_os_string(),
                is_dir: false,
            })
            .collect())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.tick()?;
        let ino = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_path_buf(), ino);
        s.dir_ops
            .push(DirOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.tick()?;
        s.names.remove(path).ok_or_else(|| not_found(path))?;
        s.dir_ops.push(DirOp::Unlink(path.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.tick()?;
        if s.ignore_syncs {
            return Ok(());
        }
        s.durable_names = s.names.clone();
        s.dir_ops.clear();
        Ok(())
    }
}

impl SimFile {
    fn with<T>(
        &self,
        mutating: bool,
        f: impl FnOnce(&mut Inode) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut s = self.state.lock();
        if mutating {
            s.tick()?;
        } else {
            s.dead()?;
        }
        let inode = s
            .inodes
            .get_mut(&self.ino)
            .ok_or_else(|| io::Error::other("stale file handle"))?;
        f(inode)
    }
}

impl VFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(false, |inode| {
            let end = offset as usize + buf.len();
            if end > inode.now.len() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end",
                ));
            }
            buf.copy_from_slice(&inode.now[offset as usize..end]);
            Ok(())
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(true, |inode| {
            let op = FileOp::Write {
                offset,
                data: buf.to_vec(),
            };
            apply(&mut inode.now, &op);
            inode.pending.push(op);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        let ignore = self.state.lock().ignore_syncs;
        self.with(true, |inode| {
            if !ignore {
                inode.durable = inode.now.clone();
                inode.pending.clear();
            }
            Ok(())
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.with(false, |inode| Ok(inode.now.len() as u64))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(true, |inode| {
            let op = FileOp::SetLen(len);
            apply(&mut inode.now, &op);
            inode.pending.push(op);
            Ok(())
        })
    }
}
