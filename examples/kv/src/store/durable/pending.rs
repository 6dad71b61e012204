//! [`Pending`]: what a durable keyspace applies while its synced commit runs on a thread of
//! its own.
//!
//! redb runs one write transaction at a time, and a synced commit holds it for as long as it
//! writes the group's pages and syncs them: 12–42 ms once a second per member under load
//! (docs/benchmarks.md, 2026-12-05), during which the apply task, and every response waiting
//! on it, used to stand still. Now the group is committed without a sync on the apply task
//! and synced by a commit on another thread, which writes only the group's past versions
//! (`recent.rs`); meanwhile the apply task keeps its changes of keys here, reads through them
//! over the file's last commit, and writes them into the next transaction once the sync is
//! done.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use bytes::Bytes;

use crate::key_range::KeyBounds;
use crate::store::keyspace::DurableState;
use crate::store::record::KeyRecord;

/// Changes not in the file yet (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Current records set (`Some`) or removed (`None`).
    pub(super) keys: BTreeMap<Bytes, Option<KeyRecord>>,
    /// Live keys added less live keys removed.
    pub(super) live_delta: i64,
    /// The state record of the last batch ended here.
    pub(super) state: Option<DurableState>,
    /// The newest cluster record given with a batch ended here.
    pub(super) cluster: Option<Vec<u8>>,
}

impl Pending {
    /// `key`'s record if it was set (`Some(Some)`) or removed (`Some(None)`) here.
    pub(super) fn get(&self, key: &[u8]) -> Option<Option<KeyRecord>> {
        self.keys.get(key).cloned()
    }

    /// Sets `key`'s record (`None`: removes it); `was_live` says whether it had one.
    pub(super) fn set(&mut self, key: Bytes, record: Option<KeyRecord>, was_live: bool) {
        self.live_delta += i64::from(record.is_some()) - i64::from(was_live);
        self.keys.insert(key, record);
    }

    /// The live keys within `bounds`: `file`'s (in key order), with the changes made here
    /// over them.
    pub(super) fn merge_live<'a>(
        &'a self,
        file: Box<dyn Iterator<Item = (Bytes, KeyRecord)> + 'a>,
        bounds: KeyBounds<'a>,
    ) -> Box<dyn Iterator<Item = (Bytes, KeyRecord)> + 'a> {
        let mut file = file.peekable();
        let mut here = self.keys.range::<[u8], _>(bounds).peekable();
        Box::new(std::iter::from_fn(move || {
            loop {
                let order = match (file.peek(), here.peek()) {
                    (None, None) => return None,
                    (Some(_), None) => Ordering::Less,
                    (None, Some(_)) => Ordering::Greater,
                    (Some((a, _)), Some((b, _))) => a.as_ref().cmp(b.as_ref()),
                };
                match order {
                    Ordering::Less => return file.next(),
                    // The change made here wins.
                    Ordering::Equal => drop(file.next()),
                    Ordering::Greater => {}
                }
                if let Some((key, Some(record))) = here.next() {
                    return Some((key.clone(), record.clone()));
                }
                // A removal: nothing to yield for this key.
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Bound;

    use super::*;

    fn record(value: &str) -> KeyRecord {
        KeyRecord {
            value: Bytes::from(value.to_string()),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
        }
    }

    #[test]
    fn changes_here_win_over_the_file_and_removals_hide_its_keys() {
        let mut p = Pending::default();
        p.set(Bytes::from("b"), Some(record("b2")), true);
        p.set(Bytes::from("c"), None, true);
        p.set(Bytes::from("d"), Some(record("d1")), false);
        p.set(Bytes::from("f"), None, false);
        let file: Vec<(Bytes, KeyRecord)> = ["a", "b", "c", "e"]
            .iter()
            .map(|k| (Bytes::from(k.to_string()), record(&format!("{k}1"))))
            .collect();
        let all = (Bound::Unbounded, Bound::Unbounded);
        let merged: Vec<(String, String)> = p
            .merge_live(Box::new(file.clone().into_iter()), all)
            .map(|(k, r)| {
                let k = String::from_utf8_lossy(&k).into_owned();
                (k, String::from_utf8_lossy(&r.value).into_owned())
            })
            .collect();
        let expected = [("a", "a1"), ("b", "b2"), ("d", "d1"), ("e", "e1")]
            .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(merged, expected);
        // One key added (d), one removed (c); b replaced and f never there.
        assert_eq!(p.live_delta, 0);

        // Within bounds, only the changes within them count.
        let bounds = (Bound::Included(&b"c"[..]), Bound::Excluded(&b"e"[..]));
        let within: Vec<Bytes> = p
            .merge_live(
                Box::new(
                    file.into_iter()
                        .filter(|(k, _)| (&b"c"[..]..&b"e"[..]).contains(&k.as_ref())),
                ),
                bounds,
            )
            .map(|(k, _)| k)
            .collect();
        assert_eq!(within, [Bytes::from("d")]);
    }
}
