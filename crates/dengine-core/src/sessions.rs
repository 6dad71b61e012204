//! Client sessions: the rule that makes a retried command take effect once (Raft thesis §6.3,
//! "Implementing linearizable semantics").
//!
//! A client that gets no answer cannot tell whether its command was applied, and a plain
//! retry may apply it twice. The thesis's fix: every client registers a session, numbers its
//! commands, and the replicated state remembers, per session, the responses of the commands it
//! applied; a command it has seen is answered with the saved response and not applied again.
//! The table here is that memory. It is pure and deterministic — everything it decides
//! depends only on the log entries applied, so every replica decides the same — and it is
//! what a runtime consults before handing a command to the state machine.
//!
//! The entries that drive it ([`SessionEntry`]) are what a runtime writes into the log in
//! place of a bare command: a registration, a numbered command, a keep-alive or a close, each
//! stamped with its leader's clock. Time in the table is **the log's time** — the largest
//! stamp applied so far — never a replica's own clock, so a session expires at the same point
//! of the log everywhere (the thesis's "sessions must expire ... in a deterministic way",
//! §6.3, which LogCabin implements the same way).
//!
//! The rules, each with a test below:
//! - a session's id is the log index of the entry that registered it: unique and the same on
//!   every replica;
//! - a numbered command is applied at most once: while its response is held, a retry gets it;
//!   once the client has said it holds the response (every command carries the lowest
//!   sequence number the client still waits for), the response is discarded and a late retry
//!   is refused, not applied;
//! - a session idle longer than `idle_expiry_ms` of log time is gone, and its commands are
//!   refused, not applied: the client must register again (and treat its unanswered commands
//!   as of unknown outcome);
//! - when `max_sessions` are open, a registration evicts the least recently active one;
//! - a session holds at most `max_unacknowledged` responses: a client with more unacknowledged
//!   commands is refused (it must collect its answers first).

use std::collections::BTreeMap;
use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::types::LogIndex;

/// A session's id: the log index of the entry that registered it.
pub type SessionId = u64;

/// The bounds of a [`SessionTable`]. Every replica must use the same: they decide what the
/// table refuses and evicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Most sessions open at once; a registration beyond it evicts the least recently active
    /// session. Default 10,000.
    pub max_sessions: usize,
    /// A session with no entry for this long, in log time (milliseconds of the leaders'
    /// clocks), expires. Default 10 minutes.
    pub idle_expiry_ms: u64,
    /// Most responses one session holds (commands applied whose responses the client has not
    /// acknowledged); a command beyond it is refused. Default 1,024.
    pub max_unacknowledged: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_sessions: 10_000,
            idle_expiry_ms: 10 * 60 * 1000,
            max_unacknowledged: 1024,
        }
    }
}

/// What a runtime with client sessions writes into the log: every command is one of these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEntry {
    /// A command outside any session (applied as it comes, as without sessions).
    Plain(Bytes),
    /// Opens a session; its id is this entry's log index.
    Register {
        /// The proposing leader's clock, milliseconds.
        stamp_ms: u64,
    },
    /// A command of a session.
    Command {
        /// The session.
        session: SessionId,
        /// The command's number within the session (from 1, increasing).
        seq: u64,
        /// The lowest sequence number whose response the client still waits for: it holds
        /// every response below, which the table may now discard.
        first_unanswered: u64,
        /// The proposing leader's clock, milliseconds.
        stamp_ms: u64,
        /// The state machine's command.
        command: Bytes,
    },
    /// Keeps an idle session from expiring.
    KeepAlive {
        /// The session.
        session: SessionId,
        /// The proposing leader's clock, milliseconds.
        stamp_ms: u64,
    },
    /// Closes a session (its saved responses go).
    Close {
        /// The session.
        session: SessionId,
        /// The proposing leader's clock, milliseconds.
        stamp_ms: u64,
    },
}

/// What the table decided for one applied [`SessionEntry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A session was opened with this id.
    Registered(SessionId),
    /// Apply the command to the state machine, then [`record`](SessionTable::record) its
    /// response. The table holds an empty response for it until then, so that what it
    /// decides for the entries after it does not depend on when responses are recorded.
    Apply,
    /// The command was applied before: here is its response (empty if it was let through
    /// earlier in the same batch and its response is not recorded yet); apply nothing.
    Duplicate(Bytes),
    /// Done: a keep-alive or a close of an open session.
    Done,
    /// Refused, nothing applied.
    Refused(SessionRefusal),
}

/// Why the table refused an entry. Nothing of it was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionRefusal {
    /// No such session: it was never opened, it expired, it was evicted or closed. The client
    /// must register a new one; its unanswered commands have an unknown outcome.
    UnknownSession,
    /// The command's response was already acknowledged by the client (it is a late
    /// duplicate): it was applied once, and is not applied again.
    AlreadyAcknowledged,
    /// The session holds [`SessionLimits::max_unacknowledged`] unacknowledged responses.
    TooManyUnacknowledged,
    /// Sequence number 0 (they start at 1).
    InvalidSequence,
    /// The entry is not a session entry at all (written by a member without client sessions,
    /// or damaged): nothing of it is applied, on every replica alike.
    Malformed,
}

impl fmt::Display for SessionRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SessionRefusal::UnknownSession => {
                "no such client session (expired, evicted, closed or never registered): \
                 register a new session; commands of the old one that got no answer have an \
                 unknown outcome"
            }
            SessionRefusal::AlreadyAcknowledged => {
                "this command of the session was applied and its response acknowledged \
                 before; it is not applied again"
            }
            SessionRefusal::TooManyUnacknowledged => {
                "the session holds its most unacknowledged responses: wait for answers to \
                 earlier commands before sending more"
            }
            SessionRefusal::InvalidSequence => "sequence numbers of a session start at 1",
            SessionRefusal::Malformed => {
                "the log entry is not a client-session entry (was it proposed by a member \
                 without client sessions? every member must have the same setting); it was \
                 not applied"
            }
        })
    }
}

/// One open session.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Session {
    /// Log time of its last entry.
    last_active_ms: u64,
    /// The client holds the responses of every command numbered below this.
    first_unanswered: u64,
    /// Responses of applied commands numbered `first_unanswered` or more.
    responses: BTreeMap<u64, Bytes>,
}

/// The replicated memory of client sessions (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionTable {
    limits: SessionLimits,
    /// Log time: the largest stamp applied.
    now_ms: u64,
    sessions: BTreeMap<SessionId, Session>,
}

/// A session table's serialized form could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("damaged client session table at byte {offset}: {problem}")]
pub struct SessionDecodeError {
    /// Where in the encoded table.
    pub offset: usize,
    /// What is wrong there.
    pub problem: &'static str,
}

/// First byte of an encoded table.
const TABLE_FORMAT: u8 = 1;

impl SessionTable {
    /// An empty table with these bounds.
    pub fn new(limits: SessionLimits) -> Self {
        SessionTable {
            limits,
            now_ms: 0,
            sessions: BTreeMap::new(),
        }
    }

    /// The table's bounds.
    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The log time: the largest stamp applied so far, in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Whether `session` is open (as of the log time applied).
    pub fn is_open(&self, session: SessionId) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| !self.expired(s))
    }

    fn expired(&self, s: &Session) -> bool {
        self.now_ms.saturating_sub(s.last_active_ms) > self.limits.idle_expiry_ms
    }

    /// Applies the session entry at log index `index`. For [`Verdict::Apply`] the caller
    /// applies the command and then calls [`record`](Self::record) with its response.
    pub fn apply(&mut self, index: LogIndex, entry: &SessionEntry) -> Verdict {
        let stamp = match entry {
            SessionEntry::Plain(_) => return Verdict::Apply,
            SessionEntry::Register { stamp_ms }
            | SessionEntry::Command { stamp_ms, .. }
            | SessionEntry::KeepAlive { stamp_ms, .. }
            | SessionEntry::Close { stamp_ms, .. } => *stamp_ms,
        };
        // Log time only moves forward: a new leader whose clock is behind its predecessor's
        // does not bring sessions back, nor make them live longer.
        self.now_ms = self.now_ms.max(stamp);
        let now = self.now_ms;
        match entry {
            SessionEntry::Plain(_) => Verdict::Apply,
            SessionEntry::Register { .. } => {
                self.register(index);
                Verdict::Registered(index)
            }
            SessionEntry::Command {
                session,
                seq,
                first_unanswered,
                ..
            } => self.command(*session, *seq, *first_unanswered),
            SessionEntry::KeepAlive { session, .. } => match self.open_session(*session) {
                Some(s) => {
                    s.last_active_ms = now;
                    Verdict::Done
                }
                None => Verdict::Refused(SessionRefusal::UnknownSession),
            },
            SessionEntry::Close { session, .. } => match self.open_session(*session) {
                Some(_) => {
                    self.sessions.remove(session);
                    Verdict::Done
                }
                None => Verdict::Refused(SessionRefusal::UnknownSession),
            },
        }
    }

    /// Records the response of the command that [`apply`](Self::apply) let through, so that
    /// a retry of it gets this response. A runtime records the responses of a batch after
    /// the state machine applied it, so a later command of the same batch may already have
    /// acknowledged this one (its `first_unanswered` is past `seq`), or closed the session:
    /// the response is then not kept (the client holds it, thesis §6.3).
    pub fn record(&mut self, session: SessionId, seq: u64, response: Bytes) {
        if let Some(slot) = self
            .sessions
            .get_mut(&session)
            .and_then(|s| s.responses.get_mut(&seq))
        {
            *slot = response;
        }
    }

    /// The session, if open; an expired one is removed on the way.
    fn open_session(&mut self, id: SessionId) -> Option<&mut Session> {
        let expired = self.sessions.get(&id).map(|s| self.expired(s))?;
        if expired {
            self.sessions.remove(&id);
            return None;
        }
        self.sessions.get_mut(&id)
    }

    fn register(&mut self, index: LogIndex) {
        let now = self.now_ms;
        let expiry = self.limits.idle_expiry_ms;
        self.sessions
            .retain(|_, s| now.saturating_sub(s.last_active_ms) <= expiry);
        while self.sessions.len() >= self.limits.max_sessions.max(1) {
            // The least recently active goes; among equals, the oldest (smallest id). The
            // same on every replica: both come from the log.
            let victim = self
                .sessions
                .iter()
                .min_by_key(|(id, s)| (s.last_active_ms, **id))
                .map(|(id, _)| *id);
            match victim {
                Some(id) => self.sessions.remove(&id),
                None => break,
            };
        }
        self.sessions.insert(
            index,
            Session {
                last_active_ms: now,
                first_unanswered: 1,
                responses: BTreeMap::new(),
            },
        );
    }

    fn command(&mut self, session: SessionId, seq: u64, first_unanswered: u64) -> Verdict {
        if seq == 0 {
            return Verdict::Refused(SessionRefusal::InvalidSequence);
        }
        let max_unacknowledged = self.limits.max_unacknowledged;
        let now = self.now_ms;
        let Some(s) = self.open_session(session) else {
            return Verdict::Refused(SessionRefusal::UnknownSession);
        };
        s.last_active_ms = now;
        // The client holds every response below `first_unanswered` (thesis §6.3: "the client
        // includes the lowest sequence number for which it has not yet received a response");
        // a command numbered at or above it can be neither acknowledged nor discarded.
        let first = first_unanswered.min(seq);
        if first > s.first_unanswered {
            s.first_unanswered = first;
            s.responses = s.responses.split_off(&first);
        }
        if seq < s.first_unanswered {
            return Verdict::Refused(SessionRefusal::AlreadyAcknowledged);
        }
        if let Some(saved) = s.responses.get(&seq) {
            return Verdict::Duplicate(saved.clone());
        }
        if s.responses.len() >= max_unacknowledged {
            return Verdict::Refused(SessionRefusal::TooManyUnacknowledged);
        }
        // Held at once (empty until `record`): a runtime applies a batch of entries before it
        // records their responses, and every replica must decide the entries after this one
        // (a retry of it, the bound on unacknowledged responses) as if the response were
        // already here, whatever its batches.
        s.responses.insert(seq, Bytes::new());
        Verdict::Apply
    }

    /// The table, serialized for a snapshot (see [`decode`](Self::decode)).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(TABLE_FORMAT);
        out.put_u64_le(self.now_ms);
        out.put_u64_le(self.sessions.len() as u64);
        for (id, s) in &self.sessions {
            out.put_u64_le(*id);
            out.put_u64_le(s.last_active_ms);
            out.put_u64_le(s.first_unanswered);
            out.put_u64_le(s.responses.len() as u64);
            for (seq, response) in &s.responses {
                out.put_u64_le(*seq);
                out.put_u64_le(response.len() as u64);
                out.put_slice(response);
            }
        }
        out.freeze()
    }

    /// Reads a table [`encode`](Self::encode) wrote, with these bounds. Every length is
    /// checked against what is left, so damaged input is refused, never trusted.
    pub fn decode(limits: SessionLimits, bytes: &[u8]) -> Result<Self, SessionDecodeError> {
        let mut r = Reader { bytes, at: 0 };
        if r.u8()? != TABLE_FORMAT {
            return Err(r.error("unknown format (written by a newer build?)"));
        }
        let now_ms = r.u64()?;
        let count = r.count(32)?;
        let mut sessions = BTreeMap::new();
        for _ in 0..count {
            let id = r.u64()?;
            let last_active_ms = r.u64()?;
            let first_unanswered = r.u64()?;
            let n = r.count(16)?;
            let mut responses = BTreeMap::new();
            for _ in 0..n {
                let seq = r.u64()?;
                let len = r.count(1)?;
                let response = Bytes::copy_from_slice(r.take(len)?);
                let in_order = responses
                    .last_key_value()
                    .is_none_or(|(last, _)| seq > *last);
                if seq < first_unanswered || !in_order {
                    return Err(r.error("a response out of order or already acknowledged"));
                }
                responses.insert(seq, response);
            }
            let session = Session {
                last_active_ms,
                first_unanswered,
                responses,
            };
            if sessions
                .last_key_value()
                .is_some_and(|(last, _)| id <= *last)
            {
                return Err(r.error("sessions out of order"));
            }
            sessions.insert(id, session);
        }
        if r.at != bytes.len() {
            return Err(r.error("bytes after the table"));
        }
        Ok(SessionTable {
            limits,
            now_ms,
            sessions,
        })
    }
}

impl Default for SessionTable {
    fn default() -> Self {
        SessionTable::new(SessionLimits::default())
    }
}

/// Tags of [`SessionEntry`]'s encoding, after [`ENTRY_MAGIC`].
const PLAIN: u8 = 0;
const REGISTER: u8 = 1;
const COMMAND: u8 = 2;
const KEEP_ALIVE: u8 = 3;
const CLOSE: u8 = 4;

/// The first bytes of every encoded [`SessionEntry`]: a bare command of a member without
/// client sessions is refused as [`SessionRefusal::Malformed`] rather than misread (unless
/// it happens to start with these two bytes and a valid tag).
const ENTRY_MAGIC: [u8; 2] = [0xD5, 0x51];

impl SessionEntry {
    /// The entry as a runtime writes it into the log.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        out.put_slice(&ENTRY_MAGIC);
        match self {
            SessionEntry::Plain(command) => {
                out.reserve(1 + command.len());
                out.put_u8(PLAIN);
                out.put_slice(command);
            }
            SessionEntry::Register { stamp_ms } => {
                out.put_u8(REGISTER);
                out.put_u64_le(*stamp_ms);
            }
            SessionEntry::Command {
                session,
                seq,
                first_unanswered,
                stamp_ms,
                command,
            } => {
                out.reserve(35 + command.len());
                out.put_u8(COMMAND);
                out.put_u64_le(*stamp_ms);
                out.put_u64_le(*session);
                out.put_u64_le(*seq);
                out.put_u64_le(*first_unanswered);
                out.put_slice(command);
            }
            SessionEntry::KeepAlive { session, stamp_ms } => {
                out.put_u8(KEEP_ALIVE);
                out.put_u64_le(*stamp_ms);
                out.put_u64_le(*session);
            }
            SessionEntry::Close { session, stamp_ms } => {
                out.put_u8(CLOSE);
                out.put_u64_le(*stamp_ms);
                out.put_u64_le(*session);
            }
        }
        out.freeze()
    }

    /// Reads an entry [`encode`](Self::encode) wrote. The command of a
    /// [`Command`](SessionEntry::Command) shares `bytes`' memory.
    pub fn decode(bytes: &Bytes) -> Result<Self, SessionDecodeError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(2)? != ENTRY_MAGIC {
            return Err(r.error("not a client-session entry"));
        }
        let tag = r.u8()?;
        if tag == PLAIN {
            return Ok(SessionEntry::Plain(bytes.slice(r.at..)));
        }
        let stamp_ms = r.u64()?;
        let entry = match tag {
            REGISTER => SessionEntry::Register { stamp_ms },
            COMMAND => {
                let session = r.u64()?;
                let seq = r.u64()?;
                let first_unanswered = r.u64()?;
                let command = bytes.slice(r.at..);
                r.at = bytes.len();
                SessionEntry::Command {
                    session,
                    seq,
                    first_unanswered,
                    stamp_ms,
                    command,
                }
            }
            KEEP_ALIVE => SessionEntry::KeepAlive {
                session: r.u64()?,
                stamp_ms,
            },
            CLOSE => SessionEntry::Close {
                session: r.u64()?,
                stamp_ms,
            },
            _ => {
                return Err(SessionDecodeError {
                    offset: 0,
                    problem: "unknown session entry kind",
                });
            }
        };
        if r.at != bytes.len() {
            return Err(r.error("bytes after the entry"));
        }
        Ok(entry)
    }
}

/// A bounds-checked reader of the encodings above.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn error(&self, problem: &'static str) -> SessionDecodeError {
        SessionDecodeError {
            offset: self.at,
            problem,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SessionDecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| self.error("truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, SessionDecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, SessionDecodeError> {
        let mut b = self.take(8)?;
        Ok(b.get_u64_le())
    }

    /// A count of items of at least `min_item` bytes each: refused if what is left cannot
    /// hold them, so a forged count never makes the reader allocate or loop for nothing.
    fn count(&mut self, min_item: usize) -> Result<usize, SessionDecodeError> {
        let n = self.u64()?;
        let left = (self.bytes.len() - self.at) / min_item.max(1);
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= left)
            .ok_or_else(|| self.error("a count larger than the bytes that follow"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(session: SessionId, seq: u64, first_unanswered: u64, stamp_ms: u64) -> SessionEntry {
        SessionEntry::Command {
            session,
            seq,
            first_unanswered,
            stamp_ms,
            command: Bytes::from_static(b"incr"),
        }
    }

    fn limits(
        max_sessions: usize,
        idle_expiry_ms: u64,
        max_unacknowledged: usize,
    ) -> SessionLimits {
        SessionLimits {
            max_sessions,
            idle_expiry_ms,
            max_unacknowledged,
        }
    }

    /// §6.3: the session's id is the registering entry's index, the same on every replica.
    #[test]
    fn a_session_is_named_by_the_index_of_its_registration() {
        let mut t = SessionTable::default();
        assert_eq!(
            t.apply(7, &SessionEntry::Register { stamp_ms: 5 }),
            Verdict::Registered(7)
        );
        assert!(t.is_open(7));
        assert!(!t.is_open(8));
    }

    /// §6.3: a response whose command a later one already acknowledged (both applied in one
    /// batch, responses recorded after it) is not kept: the table stays one that `decode`
    /// accepts, so the snapshot that holds it can be loaded. (The simulator's exactly-once
    /// workload found this: a node could not restart from such a snapshot.)
    #[test]
    fn a_response_acknowledged_before_it_was_recorded_is_not_kept() {
        let mut t = SessionTable::default();
        t.apply(1, &SessionEntry::Register { stamp_ms: 0 });
        // One batch: seq 1 (a retry of which is also in the log), then seq 2 acknowledging 1.
        assert_eq!(t.apply(2, &cmd(1, 1, 1, 0)), Verdict::Apply);
        assert_eq!(t.apply(3, &cmd(1, 2, 2, 0)), Verdict::Apply);
        t.record(1, 1, Bytes::from_static(b"one"));
        t.record(1, 2, Bytes::from_static(b"two"));
        let decoded = SessionTable::decode(SessionLimits::default(), &t.encode()).unwrap();
        assert_eq!(decoded, t);
        assert_eq!(
            t.apply(4, &cmd(1, 1, 2, 0)),
            Verdict::Refused(SessionRefusal::AlreadyAcknowledged)
        );
        assert_eq!(
            t.apply(5, &cmd(1, 2, 2, 0)),
            Verdict::Duplicate(Bytes::from_static(b"two"))
        );
    }

    /// Every replica must decide alike however its entries were batched: the leader may
    /// apply a command and its retry in one batch, a follower in two. The table's decisions
    /// therefore do not depend on when a response is recorded: the retry is a duplicate
    /// either way (and refreshes the session's activity), and the command counts toward the
    /// bound on unacknowledged responses at once. (The simulator's exactly-once workload
    /// found replicas whose sessions expired at different entries: a retry in the same batch
    /// had skipped the table.)
    #[test]
    fn decisions_do_not_depend_on_when_responses_are_recorded() {
        let entries = [
            SessionEntry::Register { stamp_ms: 0 },
            cmd(1, 1, 1, 10),
            cmd(1, 1, 1, 2_000),
            cmd(1, 2, 1, 2_500),
            cmd(1, 3, 3, 3_500),
        ];
        // Sequential: each response recorded before the next entry.
        let mut one_by_one = SessionTable::new(limits(8, 3_000, 1));
        let mut verdicts = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let v = one_by_one.apply(i as u64 + 1, e);
            if v == Verdict::Apply
                && let SessionEntry::Command { session, seq, .. } = e
            {
                one_by_one.record(*session, *seq, Bytes::from(format!("r{seq}")));
            }
            verdicts.push(v);
        }
        assert_eq!(
            verdicts,
            [
                Verdict::Registered(1),
                Verdict::Apply,
                Verdict::Duplicate(Bytes::from_static(b"r1")),
                // One unacknowledged response at most: seq 1's.
                Verdict::Refused(SessionRefusal::TooManyUnacknowledged),
                // Still open at 3,500 ms: the retry at 2,000 ms kept it active.
                Verdict::Apply,
            ]
        );
        // One batch: responses recorded after every entry was decided.
        let mut batched = SessionTable::new(limits(8, 3_000, 1));
        let decided: Vec<Verdict> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| batched.apply(i as u64 + 1, e))
            .collect();
        let same = |a: &Verdict, b: &Verdict| match (a, b) {
            (Verdict::Duplicate(_), Verdict::Duplicate(_)) => true,
            _ => a == b,
        };
        assert!(
            decided.iter().zip(&verdicts).all(|(a, b)| same(a, b)),
            "{decided:?}"
        );
        batched.record(1, 1, Bytes::from_static(b"r1"));
        batched.record(1, 3, Bytes::from_static(b"r3"));
        assert_eq!(batched, one_by_one);
    }

    /// §6.3: a command seen before is answered with its saved response, not applied again.
    #[test]
    fn a_retried_command_gets_the_saved_response_and_is_not_applied_again() {
        let mut t = SessionTable::default();
        t.apply(1, &SessionEntry::Register { stamp_ms: 0 });
        assert_eq!(t.apply(2, &cmd(1, 1, 1, 0)), Verdict::Apply);
        t.record(1, 1, Bytes::from_static(b"one"));
        assert_eq!(
            t.apply(3, &cmd(1, 1, 1, 0)),
            Verdict::Duplicate(Bytes::from_static(b"one"))
        );
        // A command after it, and a retry of the first arriving late, out of order.
        assert_eq!(t.apply(4, &cmd(1, 2, 1, 0)), Verdict::Apply);
        t.record(1, 2, Bytes::from_static(b"two"));
        assert_eq!(
            t.apply(5, &cmd(1, 1, 1, 0)),
            Verdict::Duplicate(Bytes::from_static(b"one"))
        );
        // A number never applied (a gap left by a lost proposal) is applied when it comes.
        assert_eq!(t.apply(6, &cmd(1, 4, 1, 0)), Verdict::Apply);
    }

    /// §6.3: responses the client acknowledged are discarded; a late retry of such a command
    /// is refused, never applied a second time.
    #[test]
    fn acknowledged_responses_are_discarded_and_a_late_retry_is_refused() {
        let mut t = SessionTable::default();
        t.apply(1, &SessionEntry::Register { stamp_ms: 0 });
        for seq in 1..=3 {
            assert_eq!(t.apply(1 + seq, &cmd(1, seq, 1, 0)), Verdict::Apply);
            t.record(1, seq, Bytes::from(format!("r{seq}")));
        }
        // The client holds the answers to 1 and 2.
        assert_eq!(t.apply(5, &cmd(1, 4, 3, 0)), Verdict::Apply);
        assert_eq!(
            t.apply(6, &cmd(1, 2, 3, 0)),
            Verdict::Refused(SessionRefusal::AlreadyAcknowledged)
        );
        assert_eq!(
            t.apply(7, &cmd(1, 3, 3, 0)),
            Verdict::Duplicate(Bytes::from("r3"))
        );
        // A claim to hold answers to commands at or above its own number is not believed:
        // command 5 claiming 9 acknowledged discards only what is below 5.
        t.record(1, 4, Bytes::from("r4"));
        assert_eq!(t.apply(8, &cmd(1, 5, 9, 0)), Verdict::Apply);
        t.record(1, 5, Bytes::from("r5"));
        assert_eq!(
            t.apply(9, &cmd(1, 5, 1, 0)),
            Verdict::Duplicate(Bytes::from("r5"))
        );
    }

    /// §6.3: expiry by the log's time: a session idle past the limit is gone on every replica
    /// at the same entry, and its commands are refused, not applied.
    #[test]
    fn a_session_idle_past_the_expiry_in_log_time_is_refused() {
        let mut t = SessionTable::new(limits(10, 1_000, 16));
        t.apply(1, &SessionEntry::Register { stamp_ms: 10_000 });
        t.apply(2, &SessionEntry::Register { stamp_ms: 10_000 });
        assert_eq!(t.apply(3, &cmd(1, 1, 1, 10_900)), Verdict::Apply);
        // A keep-alive holds session 2 open.
        assert_eq!(
            t.apply(
                4,
                &SessionEntry::KeepAlive {
                    session: 2,
                    stamp_ms: 10_950
                }
            ),
            Verdict::Done
        );
        // A leader whose clock is behind does not move log time back.
        assert_eq!(t.apply(5, &cmd(1, 2, 1, 5_000)), Verdict::Apply);
        assert_eq!(t.now_ms(), 10_950);
        // Idle for exactly the expiry: still open; a millisecond more: gone.
        t.apply(6, &SessionEntry::Register { stamp_ms: 11_950 });
        assert!(t.is_open(1) && t.is_open(2));
        t.apply(7, &SessionEntry::Register { stamp_ms: 11_951 });
        assert!(!t.is_open(1), "session 1 was last active at 10,950");
        assert_eq!(
            t.apply(8, &cmd(1, 3, 1, 11_951)),
            Verdict::Refused(SessionRefusal::UnknownSession)
        );
        assert!(!t.is_open(2), "session 2 was last active at 10,950 too");
        assert!(t.is_open(6) && t.is_open(7));
    }

    /// A bounded table: the least recently active session makes room for a new one.
    #[test]
    fn a_full_table_evicts_the_least_recently_active_session() {
        let mut t = SessionTable::new(limits(2, u64::MAX, 16));
        t.apply(1, &SessionEntry::Register { stamp_ms: 1 });
        t.apply(2, &SessionEntry::Register { stamp_ms: 2 });
        assert_eq!(t.apply(3, &cmd(1, 1, 1, 3)), Verdict::Apply);
        t.apply(4, &SessionEntry::Register { stamp_ms: 4 });
        assert_eq!(t.len(), 2);
        assert!(t.is_open(1) && t.is_open(4));
        assert_eq!(
            t.apply(5, &cmd(2, 1, 1, 5)),
            Verdict::Refused(SessionRefusal::UnknownSession)
        );
    }

    /// A client must collect answers: a session holds a bounded number of responses.
    #[test]
    fn a_session_holds_at_most_max_unacknowledged_responses() {
        let mut t = SessionTable::new(limits(10, u64::MAX, 2));
        t.apply(1, &SessionEntry::Register { stamp_ms: 0 });
        for seq in 1..=2 {
            assert_eq!(t.apply(1 + seq, &cmd(1, seq, 1, 0)), Verdict::Apply);
            t.record(1, seq, Bytes::new());
        }
        assert_eq!(
            t.apply(4, &cmd(1, 3, 1, 0)),
            Verdict::Refused(SessionRefusal::TooManyUnacknowledged)
        );
        // Retries of held ones are still answered; acknowledging frees room.
        assert_eq!(
            t.apply(5, &cmd(1, 2, 1, 0)),
            Verdict::Duplicate(Bytes::new())
        );
        assert_eq!(t.apply(6, &cmd(1, 3, 2, 0)), Verdict::Apply);
        assert_eq!(
            t.apply(7, &cmd(1, 0, 1, 0)),
            Verdict::Refused(SessionRefusal::InvalidSequence)
        );
    }

    #[test]
    fn a_closed_session_is_gone() {
        let mut t = SessionTable::default();
        t.apply(1, &SessionEntry::Register { stamp_ms: 0 });
        let close = SessionEntry::Close {
            session: 1,
            stamp_ms: 0,
        };
        assert_eq!(t.apply(2, &close), Verdict::Done);
        assert_eq!(
            t.apply(3, &close),
            Verdict::Refused(SessionRefusal::UnknownSession)
        );
        assert_eq!(
            t.apply(4, &cmd(1, 1, 1, 0)),
            Verdict::Refused(SessionRefusal::UnknownSession)
        );
    }

    proptest::proptest! {
        /// Hostile bytes (a forged log entry, a damaged snapshot) are refused or read, never
        /// a panic; whatever is read encodes back to the same entry.
        #[test]
        fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..96)) {
            let mut with_magic = ENTRY_MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            for candidate in [Bytes::from(bytes.clone()), Bytes::from(with_magic)] {
                if let Ok(entry) = SessionEntry::decode(&candidate) {
                    proptest::prop_assert_eq!(entry.encode(), candidate);
                }
            }
            let mut table = vec![TABLE_FORMAT];
            table.extend_from_slice(&bytes);
            for candidate in [&bytes[..], &table[..]] {
                if let Ok(t) = SessionTable::decode(SessionLimits::default(), candidate) {
                    proptest::prop_assert_eq!(&t.encode()[..], candidate);
                }
            }
        }
    }

    #[test]
    fn entries_and_tables_round_trip_and_damaged_bytes_are_refused() {
        let entries = [
            SessionEntry::Register { stamp_ms: 9 },
            SessionEntry::Plain(Bytes::from_static(b"bare")),
            cmd(3, 4, 2, 11),
            SessionEntry::KeepAlive {
                session: 3,
                stamp_ms: 12,
            },
            SessionEntry::Close {
                session: 3,
                stamp_ms: 13,
            },
        ];
        for e in &entries {
            let bytes = e.encode();
            assert_eq!(&SessionEntry::decode(&bytes).unwrap(), e);
            for cut in 0..bytes.len() {
                let cut_bytes = bytes.slice(..cut);
                // Only a command's payload may end anywhere.
                let fixed = match e {
                    SessionEntry::Plain(_) => 3,
                    SessionEntry::Command { .. } => 35,
                    _ => bytes.len(),
                };
                if cut < fixed {
                    assert!(
                        SessionEntry::decode(&cut_bytes).is_err(),
                        "{e:?} cut at {cut}"
                    );
                }
            }
        }
        assert!(SessionEntry::decode(&Bytes::from_static(&[9; 9])).is_err());
        // A bare command (no magic) is not a session entry.
        assert!(SessionEntry::decode(&Bytes::from_static(b"set x = 1")).is_err());
        let mut unknown = SessionEntry::Register { stamp_ms: 1 }.encode().to_vec();
        unknown[2] = 9;
        assert!(SessionEntry::decode(&Bytes::from(unknown)).is_err());

        let mut t = SessionTable::default();
        t.apply(1, &SessionEntry::Register { stamp_ms: 3 });
        t.apply(2, &cmd(1, 1, 1, 4));
        t.record(1, 1, Bytes::from_static(b"answer"));
        t.apply(3, &SessionEntry::Register { stamp_ms: 5 });
        let bytes = t.encode();
        assert_eq!(SessionTable::decode(t.limits(), &bytes).unwrap(), t);
        for cut in 0..bytes.len() {
            assert!(SessionTable::decode(t.limits(), &bytes[..cut]).is_err());
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(SessionTable::decode(t.limits(), &longer).is_err());
        // A forged count is refused without allocating for it.
        let mut forged = bytes.to_vec();
        forged[9..17].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = SessionTable::decode(t.limits(), &forged).unwrap_err();
        assert_eq!(err.offset, 17);
    }
}
