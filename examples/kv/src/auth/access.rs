//! What a request needs from the user's permissions ([`Needs`]: key ranges to read, key
//! ranges to write, or root), and whether a set of granted ranges covers a wanted one
//! ([`covers`]).
//!
//! etcd's rule: a request is allowed when the union of the ranges the user's roles grant
//! (with the right permission type) covers every key the request may touch. Ranges are
//! half-open byte-string intervals `[start, end)`; a single key `k` is `[k, k\0)`, the
//! immediate successor of `k` in byte order being `k\0`.

use bytes::Bytes;

use crate::proto::dengine::kv::v1::command;
use crate::proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest, request_op::Request,
};

/// A set of keys `[start, end)`; `end == None`: no upper bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Interval {
    start: Bytes,
    end: Option<Bytes>,
}

impl Interval {
    /// etcd's `(key, range_end)` pair as granted in a permission or named in a request:
    /// `range_end` empty is `key` alone, `"\0"` every key from `key` on.
    pub(crate) fn of(key: &Bytes, range_end: &Bytes) -> Self {
        let end = if range_end.is_empty() {
            Some(successor(key))
        } else if range_end.as_ref() == [0] {
            None
        } else {
            Some(range_end.clone())
        };
        Interval {
            start: key.clone(),
            end,
        }
    }

    /// A request's `(key, range_end)`. An inverted range names no key; it is checked as the
    /// single key `key`, so that a user with no permission at all is refused whatever it
    /// sends rather than allowed an empty read.
    pub(crate) fn of_request(key: &Bytes, range_end: &Bytes) -> Self {
        let interval = Interval::of(key, range_end);
        if interval.is_empty() {
            Interval::of(key, &Bytes::new())
        } else {
            interval
        }
    }

    fn is_empty(&self) -> bool {
        self.end.as_ref().is_some_and(|end| *end <= self.start)
    }
}

/// The key right after `key` in byte order.
fn successor(key: &Bytes) -> Bytes {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    Bytes::from(next)
}

/// Whether the union of `granted` covers every key of `wanted`.
pub(crate) fn covers(granted: &[&Interval], wanted: &Interval) -> bool {
    let mut sorted: Vec<&Interval> = granted.iter().copied().filter(|i| !i.is_empty()).collect();
    sorted.sort_by(|a, b| a.start.cmp(&b.start));
    // Every key in [wanted.start, reached) is covered; extend `reached` interval by interval.
    let mut reached = wanted.start.clone();
    for interval in sorted {
        if interval.start > reached {
            // A gap at `reached`: no later interval (they start later still) can fill it.
            return false;
        }
        match &interval.end {
            None => return true,
            Some(end) if *end > reached => reached = end.clone(),
            Some(_) => {}
        }
        if wanted.end.as_ref().is_some_and(|end| reached >= *end) {
            return true;
        }
    }
    false
}

/// What a request needs from its user: read and write access to key ranges, or the root
/// role (administration).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Needs {
    pub(crate) read: Vec<Interval>,
    pub(crate) write: Vec<Interval>,
    pub(crate) root: bool,
}

impl Needs {
    /// A Range: read access to its range.
    pub(crate) fn range(req: &RangeRequest) -> Self {
        Needs::read(&req.key, &req.range_end)
    }

    /// Read access to `(key, range_end)` (a Range, or a watch when it is created).
    pub(crate) fn read(key: &Bytes, range_end: &Bytes) -> Self {
        Needs {
            read: vec![Interval::of_request(key, range_end)],
            ..Needs::default()
        }
    }

    /// Whether `op` is a key-value write command or a compaction: one that
    /// [`command`](Self::command) has needs for (the others are the auth and alarm commands).
    pub(crate) fn has_needs(op: &command::Op) -> bool {
        matches!(
            op,
            command::Op::Put(_)
                | command::Op::DeleteRange(_)
                | command::Op::Txn(_)
                | command::Op::Compact(_)
        )
    }

    /// A key-value write command (Put, DeleteRange, Txn) or a compaction (root only). `None`
    /// for the auth commands, whose rules are the auth store's own.
    pub(crate) fn command(op: &command::Op) -> Option<Self> {
        let mut needs = Needs::default();
        match op {
            command::Op::Put(p) => needs.add_put(p),
            command::Op::DeleteRange(d) => needs.add_delete(d),
            command::Op::Txn(t) => needs.add_txn(t),
            command::Op::Compact(_) => needs.root = true,
            _ => return None,
        }
        Some(needs)
    }

    fn add_range(&mut self, req: &RangeRequest) {
        self.read
            .push(Interval::of_request(&req.key, &req.range_end));
    }

    /// etcd: a put writes its key, and reads it when it returns the previous value.
    fn add_put(&mut self, req: &PutRequest) {
        let key = Interval::of_request(&req.key, &Bytes::new());
        if req.prev_kv {
            self.read.push(key.clone());
        }
        self.write.push(key);
    }

    fn add_delete(&mut self, req: &DeleteRangeRequest) {
        let range = Interval::of_request(&req.key, &req.range_end);
        if req.prev_kv {
            self.read.push(range.clone());
        }
        self.write.push(range);
    }

    fn add_compare(&mut self, c: &Compare) {
        self.read.push(Interval::of_request(&c.key, &c.range_end));
    }

    /// Every compare and the operations of both branches, whichever runs: what a
    /// transaction may touch must not depend on data the user may not read.
    fn add_txn(&mut self, req: &TxnRequest) {
        for c in &req.compare {
            self.add_compare(c);
        }
        for op in req.success.iter().chain(&req.failure) {
            match &op.request {
                Some(Request::RequestRange(r)) => self.add_range(r),
                Some(Request::RequestPut(p)) => self.add_put(p),
                Some(Request::RequestDeleteRange(d)) => self.add_delete(d),
                Some(Request::RequestTxn(t)) => self.add_txn(t),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_needs_says_exactly_which_commands_have_needs() {
        // The service decides from `has_needs` (without building the needs while auth is
        // off) whether a command is an auth change; the needs come from `command`. The two
        // lists must agree, or a write would skip its permission check.
        use crate::proto::etcdserverpb::{
            AlarmRequest, AuthEnableRequest, CompactionRequest, LeaseGrantRequest,
            LeaseRevokeRequest,
        };
        let ops = [
            command::Op::Put(PutRequest::default()),
            command::Op::DeleteRange(DeleteRangeRequest::default()),
            command::Op::Txn(TxnRequest::default()),
            command::Op::Compact(CompactionRequest::default()),
            command::Op::AutoCompact(CompactionRequest::default()),
            command::Op::AuthEnable(AuthEnableRequest::default()),
            command::Op::Alarm(AlarmRequest::default()),
            command::Op::LeaseGrant(LeaseGrantRequest::default()),
            command::Op::LeaseRevoke(LeaseRevokeRequest::default()),
        ];
        for op in &ops {
            assert_eq!(Needs::has_needs(op), Needs::command(op).is_some(), "{op:?}");
        }
        assert_eq!(ops.iter().filter(|op| Needs::has_needs(op)).count(), 4);
    }

    fn iv(key: &str, end: &str) -> Interval {
        Interval::of(
            &Bytes::copy_from_slice(key.as_bytes()),
            &Bytes::copy_from_slice(end.as_bytes()),
        )
    }

    fn covered(granted: &[Interval], key: &str, end: &str) -> bool {
        let refs: Vec<&Interval> = granted.iter().collect();
        covers(
            &refs,
            &Interval::of_request(
                &Bytes::copy_from_slice(key.as_bytes()),
                &Bytes::copy_from_slice(end.as_bytes()),
            ),
        )
    }

    #[test]
    fn single_keys_ranges_and_from_key() {
        let granted = [iv("a", ""), iv("c", "e"), iv("x", "\0")];
        let cases = [
            ("a", "", true),    // the granted key
            ("a\0", "", false), // the key right after it
            ("b", "", false),
            ("c", "", true),
            ("d\u{ff}", "", true),
            ("e", "", false), // the end is exclusive
            ("c", "e", true),
            ("c", "e\0", false),
            ("b", "d", false),
            ("x", "\0", true), // from x to the end
            ("zzz", "", true),
            ("w", "\0", false),
            ("", "\0", false), // every key
        ];
        for (key, end, expected) in cases {
            assert_eq!(covered(&granted, key, end), expected, "[{key:?}, {end:?})");
        }
    }

    #[test]
    fn the_union_of_adjacent_and_overlapping_ranges_covers() {
        // [a, c) + [c, f) + [e, h): one run from a to h; [k, m) apart.
        let granted = [iv("e", "h"), iv("a", "c"), iv("c", "f"), iv("k", "m")];
        assert!(covered(&granted, "a", "h"));
        assert!(covered(&granted, "b", "g"));
        assert!(!covered(&granted, "a", "i"));
        assert!(!covered(&granted, "g", "l"), "h..k is not granted");
        assert!(covered(&granted, "k", "m"));
        // A single key granted next to a range: [b, b\0) + [b\0, d) covers [b, d).
        let granted = [iv("b", ""), iv("b\0", "d")];
        assert!(covered(&granted, "b", "d"));
        // Prefixes, as etcdctl --prefix grants them: "app/" is [app/, app0).
        let granted = [iv("app/", "app0")];
        assert!(covered(&granted, "app/x", ""));
        assert!(covered(&granted, "app/", "app0"));
        assert!(!covered(&granted, "app", "app0"));
        assert!(!covered(&granted, "apq", ""));
        // Everything.
        assert!(covered(&[iv("", "\0")], "", "\0"));
        // Nothing.
        assert!(!covered(&[], "a", ""));
    }

    #[test]
    fn inverted_ranges_need_their_first_key() {
        assert!(!covered(&[], "b", "a"));
        assert!(covered(&[iv("b", "")], "b", "a"));
        // An inverted grant grants nothing.
        assert!(!covered(&[iv("b", "a")], "b", ""));
    }

    #[test]
    fn transactions_need_every_compare_and_both_branches() {
        use crate::proto::etcdserverpb::RequestOp;
        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        let txn = TxnRequest {
            compare: vec![Compare {
                key: b("c"),
                ..Compare::default()
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: b("p"),
                    prev_kv: true,
                    ..PutRequest::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(Request::RequestTxn(TxnRequest {
                    success: vec![RequestOp {
                        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                            key: b("d"),
                            range_end: b("e"),
                            prev_kv: false,
                        })),
                    }],
                    failure: vec![RequestOp {
                        request: Some(Request::RequestRange(RangeRequest {
                            key: b("r"),
                            ..RangeRequest::default()
                        })),
                    }],
                    ..TxnRequest::default()
                })),
            }],
        };
        let needs = Needs::command(&command::Op::Txn(txn));
        assert_eq!(
            needs,
            Some(Needs {
                read: vec![iv("c", ""), iv("p", ""), iv("r", "")],
                write: vec![iv("p", ""), iv("d", "e")],
                root: false,
            })
        );
    }
}
