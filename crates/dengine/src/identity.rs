//! A member's identity on disk: which cluster and member a data directory belongs to, and
//! which incarnation of that member it is.
//!
//! Raft assumes that a voter never forgets what it acknowledged. A member whose data
//! directory was wiped, replaced or lost must therefore never come back as if it were the
//! member it was: it could vote for a leader that lacks committed entries, or count towards a
//! commit it does not hold. The file `<data_dir>/member` records the identity when the
//! directory is first initialized; [`start`](crate::start) checks it on every start:
//!
//! * a data directory of another member or cluster is refused;
//! * a member whose file exists but whose log is gone lost its data, and is refused;
//! * a directory with no file and no log is new: before it founds or joins a cluster, the
//!   other members are asked whether they have seen this member id before (with another
//!   incarnation) — if so, it lost its data and is refused, with the procedure to replace it.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use dengine_core::NodeId;

/// The file name of the identity in a data directory.
pub const IDENTITY_FILE: &str = "member";

/// Who a data directory belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberIdentity {
    /// The cluster.
    pub cluster_id: u64,
    /// The member.
    pub member_id: NodeId,
    /// A random number chosen when the directory was initialized: a member that comes back
    /// with another one lost its storage.
    pub incarnation: u64,
}

/// Why the identity file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The file could not be read or written.
    #[error("cannot {op} the member identity file {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file's contents are not an identity.
    #[error(
        "the member identity file {path} is damaged ({detail}); if the data directory is \
         otherwise intact, restore the file from a backup, else replace the member \
         (docs/operations.md, \"Replacing a member\")"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl MemberIdentity {
    /// A new identity with a fresh incarnation.
    pub fn new(cluster_id: u64, member_id: NodeId) -> Self {
        MemberIdentity {
            cluster_id,
            member_id,
            incarnation: fresh_incarnation(),
        }
    }

    /// Reads the identity of `data_dir`; `None` if it has none.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, IdentityError> {
        let path = data_dir.join(IDENTITY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(IdentityError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        Self::parse(&text)
            .map(Some)
            .map_err(|detail| IdentityError::Damaged { path, detail })
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some("dengine-member") {
            return Err("it does not start with \"dengine-member\"".into());
        }
        let (mut cluster, mut member, mut incarnation) = (None, None, None);
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let Some((key, value)) = line.split_once('=').map(|(k, v)| (k.trim(), v.trim())) else {
                return Err(format!("unexpected line {line:?}"));
            };
            let number =
                |radix| u64::from_str_radix(value, radix).map_err(|_| format!("{key} = {value:?}"));
            match key {
                "cluster_id" => cluster = Some(number(10)?),
                "member_id" => member = Some(number(10)?),
                "incarnation" => incarnation = Some(number(16)?),
                _ => return Err(format!("unknown key {key:?}")),
            }
        }
        match (cluster, member, incarnation) {
            (Some(cluster_id), Some(member_id), Some(incarnation)) if member_id != 0 => {
                Ok(MemberIdentity {
                    cluster_id,
                    member_id,
                    incarnation,
                })
            }
            _ => Err("cluster_id, member_id or incarnation is missing".into()),
        }
    }

    /// Writes the identity into `data_dir` durably (a temporary file, synced, renamed, and
    /// the directory synced), so that a crash leaves either no file or the whole file.
    pub fn save(&self, data_dir: &Path) -> Result<(), IdentityError> {
        let path = data_dir.join(IDENTITY_FILE);
        let tmp = data_dir.join(format!("{IDENTITY_FILE}.tmp"));
        let io = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| IdentityError::Io { op, path, source }
        };
        let mut file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        file.write_all(self.to_string().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
        std::fs::File::open(data_dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io("sync the directory of", &path))
    }
}

impl fmt::Display for MemberIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dengine-member\ncluster_id = {}\nmember_id = {}\nincarnation = {:016x}\n",
            self.cluster_id, self.member_id, self.incarnation
        )
    }
}

/// A random, non-zero incarnation. Not cryptographic: it only has to differ between two
/// initializations of a data directory (the clock, the process id and std's per-process
/// random hash keys all go in).
fn fresh_incarnation() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_round_trips_and_garbage_is_named_as_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(MemberIdentity::load(dir.path()).unwrap(), None);
        let id = MemberIdentity::new(42, 3);
        assert_ne!(id.incarnation, 0);
        assert_ne!(id.incarnation, MemberIdentity::new(42, 3).incarnation);
        id.save(dir.path()).unwrap();
        assert_eq!(MemberIdentity::load(dir.path()).unwrap(), Some(id));
        for bad in [
            "",
            "dengine-member\n",
            "dengine-member\ncluster_id = 1\nmember_id = 0\nincarnation = 1\n",
            "dengine-member\ncluster_id = x\nmember_id = 1\nincarnation = 1\n",
            "something else\n",
        ] {
            std::fs::write(dir.path().join(IDENTITY_FILE), bad).unwrap();
            let err = MemberIdentity::load(dir.path()).unwrap_err();
            assert!(
                matches!(err, IdentityError::Damaged { .. }),
                "{bad:?}: {err}"
            );
        }
    }
}
