//! Client sessions in the runtime: [`SessionMachine`] stands between the apply task and the
//! application's state machine and consults the session table
//! ([`dengine_core::sessions`], thesis §6.3) before each command, so that a command a client
//! retries takes effect once — in the runtime, for any state machine, which never sees a
//! duplicate.
//!
//! With sessions on ([`NodeBuilder::client_sessions`](crate::NodeBuilder::client_sessions))
//! every command in the log is a [`SessionEntry`]: the node wraps a plain
//! [`Node::propose`](crate::Node::propose) as [`SessionEntry::Plain`], and the session calls
//! of [`Node`](crate::Node) write the others. What the session table decides comes back to
//! the proposer as a [`SessionAnswer`], encoded in the entry's response.
//!
//! The table is in every snapshot, ahead of the state machine's own bytes:
//!
//! ```text
//! "DSESS002" | u64 table_len | table (SessionTable::encode) | the state machine's snapshot
//! ```
//!
//! so a member restored from a snapshot, or rebuilt from one and the log after it at a
//! restart, holds the same table as the others. The responses the table keeps are encoded
//! [`SessionAnswer`]s, ready to send again.
//!
//! A durable state machine (one that keeps its own state across restarts) restarts at its
//! own applied index `A` without the log being applied again, so the table is rebuilt at
//! start instead ([`SessionMachine::rebuild_table`]): taken from the newest snapshot (at
//! `S <= A`) and brought to `A` by passing the log entries `(S, A]` through the table only.
//! The table's decisions come out as on every other member (they depend on the entries, not
//! on the responses), but the responses of the commands in `(S, A]` were given before the
//! restart and are gone: a retry of one of them is answered
//! [`SessionAnswer::ResponseLost`] — applied once, response unavailable — never applied again.
//!
//! With sessions off the wrapper passes everything through unchanged.

use std::collections::HashMap;
use std::io::{self, Read as _};

use bytes::{BufMut, Bytes, BytesMut};
use dengine_core::sessions::{
    SessionDecodeError, SessionEntry, SessionId, SessionLimits, SessionRefusal, SessionTable,
    Verdict,
};
use dengine_core::store::{Command, SnapshotData, SnapshotIoError, SnapshotView};
use dengine_core::{LogIndex, LogLimiter, StateMachine};

/// First bytes of a snapshot that carries a session table.
const SNAPSHOT_MAGIC: &[u8; 8] = b"DSESS002";
/// The magic and the table's length.
const HEADER_LEN: usize = 16;

/// What the runtime answers a session call with (the entry's response, decoded by the node).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SessionAnswer {
    /// The state machine's response to a session's command (first applied now, or saved).
    Response(Bytes),
    /// A session was opened.
    Registered(SessionId),
    /// A keep-alive or close was done.
    Done,
    /// Refused; nothing applied.
    Refused(SessionRefusal),
    /// The command was applied (once), but its response is not known any more: it was
    /// applied on this member before a restart that rebuilt the table from the log (a
    /// durable state machine; see the module documentation).
    ResponseLost,
}

const ANSWER_RESPONSE: u8 = 0;
const ANSWER_REGISTERED: u8 = 1;
const ANSWER_DONE: u8 = 2;
const ANSWER_REFUSED: u8 = 3;
const ANSWER_RESPONSE_LOST: u8 = 4;

/// A refusal's code in an encoded answer, and back. Written as matches, so that a new kind
/// of refusal does not compile until it has a code.
fn refusal_code(why: SessionRefusal) -> u8 {
    match why {
        SessionRefusal::UnknownSession => 0,
        SessionRefusal::AlreadyAcknowledged => 1,
        SessionRefusal::TooManyUnacknowledged => 2,
        SessionRefusal::InvalidSequence => 3,
        SessionRefusal::Malformed => 4,
    }
}

fn refusal_of(code: u8) -> Option<SessionRefusal> {
    Some(match code {
        0 => SessionRefusal::UnknownSession,
        1 => SessionRefusal::AlreadyAcknowledged,
        2 => SessionRefusal::TooManyUnacknowledged,
        3 => SessionRefusal::InvalidSequence,
        4 => SessionRefusal::Malformed,
        _ => return None,
    })
}

impl SessionAnswer {
    pub(crate) fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            SessionAnswer::Response(r) => {
                out.reserve(1 + r.len());
                out.put_u8(ANSWER_RESPONSE);
                out.put_slice(r);
            }
            SessionAnswer::Registered(id) => {
                out.put_u8(ANSWER_REGISTERED);
                out.put_u64_le(*id);
            }
            SessionAnswer::Done => out.put_u8(ANSWER_DONE),
            SessionAnswer::Refused(why) => {
                out.put_u8(ANSWER_REFUSED);
                out.put_u8(refusal_code(*why));
            }
            SessionAnswer::ResponseLost => out.put_u8(ANSWER_RESPONSE_LOST),
        }
        out.freeze()
    }

    /// `None` for bytes this module did not write (a state machine's response to a plain
    /// command, given to a session call: a node whose setting differs from the proposer's).
    pub(crate) fn decode(bytes: &Bytes) -> Option<Self> {
        let (&tag, rest) = bytes.split_first()?;
        match tag {
            ANSWER_RESPONSE => Some(SessionAnswer::Response(bytes.slice(1..))),
            ANSWER_REGISTERED => Some(SessionAnswer::Registered(u64::from_le_bytes(
                rest.try_into().ok()?,
            ))),
            ANSWER_DONE if rest.is_empty() => Some(SessionAnswer::Done),
            ANSWER_REFUSED => match rest {
                [code] => refusal_of(*code).map(SessionAnswer::Refused),
                _ => None,
            },
            ANSWER_RESPONSE_LOST if rest.is_empty() => Some(SessionAnswer::ResponseLost),
            _ => None,
        }
    }
}

/// Why a session-carrying state machine failed: the application's state machine, or a
/// snapshot whose session table is damaged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionMachineError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Inner(E),
    #[error("{0}")]
    Table(#[from] SessionDecodeError),
}

/// Where one command of an applied batch gets its response from.
enum Slot {
    /// The state machine's response to the n-th command handed to it; with the session and
    /// sequence number to save it under, for a session's command.
    Applied(usize, Option<(SessionId, u64)>),
    /// Decided by the table.
    Answered(SessionAnswer),
    /// A saved answer, already encoded.
    Saved(Bytes),
    /// The same command as an earlier slot of this batch (a retry committed with it).
    SameAs(usize),
}

/// The application's state machine, with the session table in front of it (see the module
/// documentation). `table` is `None` with sessions off.
pub(crate) struct SessionMachine<M> {
    inner: M,
    table: Option<SessionTable>,
    malformed_log: LogLimiter,
}

impl<M: StateMachine> SessionMachine<M> {
    pub(crate) fn new(inner: M, sessions: Option<SessionLimits>) -> Self {
        SessionMachine {
            inner,
            table: sessions.map(SessionTable::new),
            malformed_log: LogLimiter::per_ten_seconds(),
        }
    }

    /// The batch with sessions on: decided by the table, the rest applied by the state
    /// machine in one call, in log order.
    async fn apply_with_sessions(
        &mut self,
        commands: &[Command],
        applied_up_to: LogIndex,
    ) -> Result<Vec<Bytes>, M::Error> {
        let Some(table) = self.table.as_mut() else {
            return self.inner.apply(commands, applied_up_to).await;
        };
        let mut slots = Vec::with_capacity(commands.len());
        let mut to_apply = Vec::with_capacity(commands.len());
        let mut in_batch: HashMap<(SessionId, u64), usize> = HashMap::new();
        for c in commands {
            let entry = match SessionEntry::decode(&c.data) {
                Ok(entry) => entry,
                Err(e) => {
                    if let Some(suppressed) = self.malformed_log.allow(std::time::Instant::now()) {
                        tracing::warn!(
                            index = c.index,
                            suppressed,
                            "a log entry is not a client-session entry ({e}); it is not \
                             applied. Do all members run with client sessions on?"
                        );
                    }
                    slots.push(Slot::Answered(SessionAnswer::Refused(
                        SessionRefusal::Malformed,
                    )));
                    continue;
                }
            };
            let key = match &entry {
                SessionEntry::Command { session, seq, .. } => Some((*session, *seq)),
                _ => None,
            };
            // The table decides every entry, a retry of a command of this batch too (it
            // refreshes the session, and replicas batch differently); such a retry's saved
            // response is only a placeholder yet, so it gets the first copy's answer.
            let verdict = table.apply(c.index, &entry);
            if let (Verdict::Duplicate(_), Some(first)) =
                (&verdict, key.and_then(|k| in_batch.get(&k)))
            {
                slots.push(Slot::SameAs(*first));
                continue;
            }
            let slot = match verdict {
                Verdict::Apply => {
                    let command = match entry {
                        SessionEntry::Plain(command) | SessionEntry::Command { command, .. } => {
                            command
                        }
                        // The table lets only these two through.
                        _ => Bytes::new(),
                    };
                    to_apply.push(Command {
                        index: c.index,
                        data: command,
                    });
                    if let Some(k) = key {
                        in_batch.insert(k, slots.len());
                    }
                    Slot::Applied(to_apply.len() - 1, key)
                }
                Verdict::Registered(id) => Slot::Answered(SessionAnswer::Registered(id)),
                Verdict::Duplicate(saved) => Slot::Saved(saved),
                Verdict::Done => Slot::Answered(SessionAnswer::Done),
                Verdict::Refused(why) => Slot::Answered(SessionAnswer::Refused(why)),
            };
            slots.push(slot);
        }
        let responses = self.inner.apply(&to_apply, applied_up_to).await?;
        let mut out: Vec<Bytes> = Vec::with_capacity(slots.len());
        for slot in slots {
            let answer = match slot {
                Slot::Applied(i, key) => {
                    let response = responses.get(i).cloned().unwrap_or_default();
                    match key {
                        Some((session, seq)) => {
                            // Saved as sent: a retry gets the same bytes, with no copy.
                            let answer = SessionAnswer::Response(response).encode();
                            table.record(session, seq, answer.clone());
                            answer
                        }
                        // A plain command's response goes back as the state machine gave it.
                        None => response,
                    }
                }
                Slot::Answered(answer) => answer.encode(),
                Slot::Saved(saved) => saved,
                Slot::SameAs(first) => out.get(first).cloned().unwrap_or_default(),
            };
            out.push(answer);
        }
        Ok(out)
    }
}

impl<M: StateMachine> SessionMachine<M> {
    /// Whether sessions are on.
    pub(crate) fn sessions_on(&self) -> bool {
        self.table.is_some()
    }

    /// Rebuilds the session table of a durable state machine at a restart (see the module
    /// documentation): from the table at the head of `snapshot` (the newest snapshot, which
    /// the state machine's state covers; `None`: there is none, start empty), then through
    /// `entries`, the log entries after that snapshot up to the state machine's applied
    /// index, in order. Their commands are not applied again; a retry of one is answered
    /// [`SessionAnswer::ResponseLost`]. A no-op with sessions off.
    pub(crate) fn rebuild_table(
        &mut self,
        snapshot: Option<&SnapshotData>,
        entries: &[dengine_core::Entry],
    ) -> Result<(), String> {
        let Some(table) = self.table.as_mut() else {
            return Ok(());
        };
        if let Some(data) = snapshot {
            let (from_snapshot, _) = read_header(table.limits(), data).map_err(|problem| {
                format!("the snapshot's client session table cannot be read: {problem}")
            })?;
            *table = from_snapshot;
        }
        let lost = SessionAnswer::ResponseLost.encode();
        for e in entries {
            let dengine_core::EntryPayload::Normal(data) = &e.payload else {
                continue;
            };
            // What the apply path does with each command, minus the state machine: a
            // malformed entry leaves the table alone, the rest is decided by it.
            let Ok(entry) = SessionEntry::decode(data) else {
                continue;
            };
            if let (Verdict::Apply, SessionEntry::Command { session, seq, .. }) =
                (table.apply(e.index, &entry), &entry)
            {
                table.record(*session, *seq, lost.clone());
            }
        }
        Ok(())
    }
}

impl<M: StateMachine> StateMachine for SessionMachine<M> {
    type Error = SessionMachineError<M::Error>;

    async fn apply(
        &mut self,
        commands: &[Command],
        applied_up_to: LogIndex,
    ) -> Result<Vec<Bytes>, Self::Error> {
        self.apply_with_sessions(commands, applied_up_to)
            .await
            .map_err(SessionMachineError::Inner)
    }

    fn applied_index(&self) -> LogIndex {
        self.inner.applied_index()
    }

    fn durable(&self) -> bool {
        self.inner.durable()
    }

    async fn snapshot(&mut self) -> Result<Bytes, Self::Error> {
        let data = self
            .inner
            .snapshot()
            .await
            .map_err(SessionMachineError::Inner)?;
        Ok(match &self.table {
            Some(table) => {
                let mut out = header(table);
                out.extend_from_slice(&data);
                Bytes::from(out)
            }
            None => data,
        })
    }

    async fn install_snapshot(
        &mut self,
        data: Bytes,
        applied_up_to: LogIndex,
    ) -> Result<(), Self::Error> {
        let (table, rest) = match &self.table {
            Some(t) => {
                let (table, offset) = read_header(t.limits(), &SnapshotData::from(data.clone()))
                    .map_err(|problem| SessionDecodeError { offset: 0, problem })?;
                (Some(table), data.slice(offset as usize..))
            }
            None => (None, data),
        };
        self.inner
            .install_snapshot(rest, applied_up_to)
            .await
            .map_err(SessionMachineError::Inner)?;
        if table.is_some() {
            self.table = table;
        }
        Ok(())
    }

    async fn write_snapshot(
        &mut self,
        out: &mut (dyn io::Write + Send),
    ) -> Result<(), SnapshotIoError> {
        if let Some(table) = &self.table {
            out.write_all(&header(table))?;
        }
        self.inner.write_snapshot(out).await
    }

    fn snapshot_view(&mut self) -> Result<Option<Box<dyn SnapshotView>>, SnapshotIoError> {
        let Some(inner) = self.inner.snapshot_view()? else {
            return Ok(None);
        };
        Ok(Some(match &self.table {
            // The table as of the view: it changes with every command applied after.
            Some(table) => Box::new(WithHeader {
                header: header(table),
                inner,
            }),
            None => inner,
        }))
    }

    async fn install_snapshot_from(
        &mut self,
        data: SnapshotData,
        applied_up_to: LogIndex,
    ) -> Result<(), SnapshotIoError> {
        let Some(limits) = self.table.as_ref().map(SessionTable::limits) else {
            return self.inner.install_snapshot_from(data, applied_up_to).await;
        };
        // Read and checked before the state machine is touched: a damaged table leaves the
        // state as it was.
        let (table, offset) = read_header(limits, &data).map_err(|problem| {
            format!("the snapshot's client session table cannot be read: {problem}")
        })?;
        self.inner
            .install_snapshot_from(data.slice_from(offset), applied_up_to)
            .await?;
        self.table = Some(table);
        Ok(())
    }

    fn query(
        &self,
        request: Bytes,
    ) -> impl std::future::Future<Output = Result<Bytes, Self::Error>> + Send {
        // The inner future only: `&self` is not `Sync` when the state machine is not.
        let answer = self.inner.query(request);
        async move { answer.await.map_err(SessionMachineError::Inner) }
    }
}

/// A state machine's view behind the session table's header, as
/// [`write_snapshot`](StateMachine::write_snapshot) writes them.
struct WithHeader {
    header: Vec<u8>,
    inner: Box<dyn SnapshotView>,
}

impl SnapshotView for WithHeader {
    fn write_to(self: Box<Self>, out: &mut (dyn io::Write + Send)) -> Result<(), SnapshotIoError> {
        out.write_all(&self.header)?;
        self.inner.write_to(out)
    }
}

/// The snapshot header: magic, length, table.
fn header(table: &SessionTable) -> Vec<u8> {
    let encoded = table.encode();
    let mut out = Vec::with_capacity(HEADER_LEN + encoded.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&(encoded.len() as u64).to_le_bytes());
    out.extend_from_slice(&encoded);
    out
}

/// The table at the head of a snapshot, and where the state machine's bytes start.
fn read_header(
    limits: SessionLimits,
    data: &SnapshotData,
) -> Result<(SessionTable, u64), &'static str> {
    let mut reader = data.reader();
    let mut head = [0u8; HEADER_LEN];
    read_or(
        &mut reader,
        &mut head,
        "the snapshot is shorter than its header",
    )?;
    if &head[..8] != SNAPSHOT_MAGIC {
        return Err(
            "no session table at the start (taken by a member without client \
                    sessions? every member must have the same setting)",
        );
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&head[8..]);
    let len = u64::from_le_bytes(len_bytes);
    let end = (HEADER_LEN as u64)
        .checked_add(len)
        .filter(|end| *end <= data.len())
        .ok_or("the session table's length runs past the snapshot's end")?;
    let mut table = vec![0u8; len as usize];
    read_or(
        &mut reader,
        &mut table,
        "the snapshot ends inside the table",
    )?;
    let table = SessionTable::decode(limits, &table).map_err(|e| e.problem)?;
    Ok((table, end))
}

fn read_or(
    reader: &mut dengine_core::store::SnapshotReader,
    buf: &mut [u8],
    problem: &'static str,
) -> Result<(), &'static str> {
    reader.read_exact(buf).map_err(|_| problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the commands applied; answers each with the count so far, and snapshots as
    /// the count.
    #[derive(Default)]
    struct Counting {
        applied: u64,
    }

    impl Counting {
        fn applied_commands(&self) -> u64 {
            self.applied
        }
    }

    impl StateMachine for Counting {
        type Error = io::Error;

        async fn apply(&mut self, commands: &[Command], _: LogIndex) -> io::Result<Vec<Bytes>> {
            Ok(commands
                .iter()
                .map(|_| {
                    self.applied += 1;
                    Bytes::copy_from_slice(&self.applied.to_le_bytes())
                })
                .collect())
        }

        async fn snapshot(&mut self) -> io::Result<Bytes> {
            Ok(Bytes::copy_from_slice(&self.applied.to_le_bytes()))
        }

        async fn install_snapshot(&mut self, data: Bytes, _: LogIndex) -> io::Result<()> {
            let bytes = <[u8; 8]>::try_from(data.as_ref()).map_err(io::Error::other)?;
            self.applied = u64::from_le_bytes(bytes);
            Ok(())
        }

        async fn query(&self, _: Bytes) -> io::Result<Bytes> {
            Ok(Bytes::copy_from_slice(&self.applied.to_le_bytes()))
        }
    }

    fn at(index: LogIndex, entry: &SessionEntry) -> Command {
        Command {
            index,
            data: entry.encode(),
        }
    }

    fn set(session: SessionId, seq: u64, command: &str) -> SessionEntry {
        SessionEntry::Command {
            session,
            seq,
            first_unanswered: 1,
            stamp_ms: 0,
            command: Bytes::copy_from_slice(command.as_bytes()),
        }
    }

    fn answers(bytes: &[Bytes]) -> Vec<SessionAnswer> {
        bytes
            .iter()
            .map(|b| SessionAnswer::decode(b).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_retry_in_the_same_batch_or_a_later_one_reaches_the_state_machine_once() {
        let mut sm = SessionMachine::new(Counting::default(), Some(Default::default()));
        let r = sm
            .apply(&[at(1, &SessionEntry::Register { stamp_ms: 0 })], 1)
            .await
            .unwrap();
        assert_eq!(answers(&r), [SessionAnswer::Registered(1)]);
        let r = sm
            .apply(
                &[
                    at(2, &set(1, 1, "a=1")),
                    at(3, &set(1, 1, "a=1")),
                    at(4, &SessionEntry::Plain(Bytes::from_static(b"b=2"))),
                ],
                4,
            )
            .await
            .unwrap();
        assert_eq!(r[0], r[1]);
        assert!(matches!(
            SessionAnswer::decode(&r[0]),
            Some(SessionAnswer::Response(_))
        ));
        let r = sm.apply(&[at(5, &set(1, 1, "a=1"))], 5).await.unwrap();
        assert!(matches!(
            SessionAnswer::decode(&r[0]),
            Some(SessionAnswer::Response(_))
        ));
        // The state machine saw one "a=1" and the plain command.
        assert_eq!(sm.inner.applied_commands(), 2);
        // A bare command (not an entry of a node with sessions) is refused, not applied.
        let r = sm
            .apply(
                &[Command {
                    index: 6,
                    data: Bytes::from_static(b"c=3"),
                }],
                6,
            )
            .await
            .unwrap();
        assert_eq!(
            answers(&r),
            [SessionAnswer::Refused(SessionRefusal::Malformed)]
        );
        assert_eq!(sm.inner.applied_commands(), 2);
    }

    #[tokio::test]
    async fn the_table_travels_in_snapshots_and_a_damaged_one_is_refused() {
        let mut sm = SessionMachine::new(Counting::default(), Some(Default::default()));
        sm.apply(&[at(1, &SessionEntry::Register { stamp_ms: 0 })], 1)
            .await
            .unwrap();
        sm.apply(&[at(2, &set(1, 1, "a=1"))], 2).await.unwrap();
        let mut file = Vec::new();
        sm.write_snapshot(&mut file).await.unwrap();
        assert_eq!(file, sm.snapshot().await.unwrap());

        let mut restored = SessionMachine::new(Counting::default(), Some(Default::default()));
        restored
            .install_snapshot_from(SnapshotData::from(file.clone()), 2)
            .await
            .unwrap();
        assert_eq!(restored.table, sm.table);
        // The retry after the restore is answered from the table, not applied.
        let r = restored
            .apply(&[at(3, &set(1, 1, "a=1"))], 3)
            .await
            .unwrap();
        let original = sm.apply(&[at(3, &set(1, 1, "a=1"))], 3).await.unwrap();
        assert_eq!(r, original);
        assert_eq!(
            restored.inner.applied_commands(),
            1,
            "restored from the snapshot"
        );

        for damaged in [
            file[..10].to_vec(),
            [b"XSESS001".as_slice(), &file[8..]].concat(),
            {
                let mut f = file.clone();
                f[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
                f
            },
        ] {
            let mut target = SessionMachine::new(Counting::default(), Some(Default::default()));
            let err = target
                .install_snapshot_from(SnapshotData::from(damaged), 2)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("session table"), "{err}");
            assert!(target.table.as_ref().is_some_and(SessionTable::is_empty));
        }
    }

    /// A durable state machine's table rebuilt at a restart (thesis §6.3: every replica must
    /// decide each session entry alike): from the snapshot's table and the log after it, it
    /// decides what follows as the table of a member that applied everything does — only
    /// the responses of the replayed commands are gone, answered `ResponseLost`, never
    /// applied again.
    #[tokio::test]
    async fn a_table_rebuilt_from_a_snapshot_and_the_log_decides_as_the_others() {
        let log = [
            SessionEntry::Register { stamp_ms: 0 },
            set(1, 1, "a=1"),
            SessionEntry::Register { stamp_ms: 10 },
            set(1, 2, "a=2"),
            set(3, 1, "b=1"),
            SessionEntry::Plain(Bytes::from_static(b"c=1")),
        ];
        let entries: Vec<dengine_core::Entry> = log
            .iter()
            .enumerate()
            .map(|(i, e)| dengine_core::Entry {
                index: i as u64 + 1,
                term: 1,
                payload: dengine_core::EntryPayload::Normal(e.encode()),
            })
            .collect();
        let mut applied = SessionMachine::new(Counting::default(), Some(Default::default()));
        let mut snapshot = None;
        for (i, e) in log.iter().enumerate() {
            let index = i as u64 + 1;
            applied.apply(&[at(index, e)], index).await.unwrap();
            if i == 1 {
                snapshot = Some(SnapshotData::from(applied.snapshot().await.unwrap()));
            }
        }
        // Restarted at index 6 with its own state; the newest snapshot is at index 2.
        let mut rebuilt = SessionMachine::new(Counting::default(), Some(Default::default()));
        rebuilt
            .rebuild_table(snapshot.as_ref(), &entries[2..])
            .unwrap();
        let (a, r) = (
            applied.table.as_ref().unwrap(),
            rebuilt.table.as_ref().unwrap(),
        );
        assert_eq!((a.len(), a.now_ms()), (r.len(), r.now_ms()));

        let next = [
            at(7, &set(1, 1, "a=1")), // in the snapshot: the saved response
            at(8, &set(1, 2, "a=2")), // replayed: lost
            at(9, &set(3, 2, "b=2")), // new: applied by both
            at(10, &set(9, 1, "x")),  // no such session on either
        ];
        let from_applied = answers(&applied.apply(&next, 10).await.unwrap());
        let from_rebuilt = answers(&rebuilt.apply(&next, 10).await.unwrap());
        assert_eq!(from_rebuilt[0], from_applied[0]);
        assert!(matches!(from_applied[1], SessionAnswer::Response(_)));
        assert_eq!(from_rebuilt[1], SessionAnswer::ResponseLost);
        assert!(matches!(from_rebuilt[2], SessionAnswer::Response(_)));
        assert_eq!(from_rebuilt[3], from_applied[3]);
        assert_eq!(rebuilt.inner.applied_commands(), 1, "only the new command");

        // A snapshot without a table (a member without sessions took it) is refused.
        let mut other = SessionMachine::new(Counting::default(), Some(Default::default()));
        let err = other
            .rebuild_table(Some(&SnapshotData::from(b"12345678".to_vec())), &[])
            .unwrap_err();
        assert!(err.contains("session table"), "{err}");
    }

    #[tokio::test]
    async fn with_sessions_off_everything_passes_through() {
        let mut sm = SessionMachine::new(Counting::default(), None);
        let plain = Command {
            index: 1,
            data: Bytes::from_static(b"a=1"),
        };
        let r = sm.apply(&[plain], 1).await.unwrap();
        assert_eq!(sm.inner.applied_commands(), 1);
        let mut file = Vec::new();
        sm.write_snapshot(&mut file).await.unwrap();
        assert_eq!(Bytes::from(file), sm.inner.snapshot().await.unwrap());
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn answers_round_trip_and_foreign_bytes_are_not_answers() {
        let refusals = (0..=u8::MAX)
            .filter_map(refusal_of)
            .map(SessionAnswer::Refused);
        for a in [
            SessionAnswer::Response(Bytes::from_static(b"x")),
            SessionAnswer::Registered(42),
            SessionAnswer::Done,
            SessionAnswer::ResponseLost,
        ]
        .into_iter()
        .chain(refusals)
        {
            assert_eq!(SessionAnswer::decode(&a.encode()), Some(a));
        }
        for foreign in [
            &b""[..],
            b"\x09",
            b"\x01abc",
            b"\x02x",
            b"\x03\x09",
            b"\x04x",
        ] {
            assert_eq!(
                SessionAnswer::decode(&Bytes::copy_from_slice(foreign)),
                None
            );
        }
    }
}
