//! The etcd v3 `Watch` service: one task per client stream serves all the stream's watchers
//! from the [`WatchHub`] history.
//!
//! The task owns its watchers and catches each one up whenever the hub publishes a revision,
//! sending at most `response_buffer` responses ahead of the client. A client that stops
//! reading holds up only its own task; once it reads again, a watcher whose next revision has
//! left the event history is served from the store's MVCC history (a local read of at most
//! `max_history_events` revisions at a time), as etcd serves its unsynced watchers; only one
//! whose next revision the store has compacted away gets etcd's "compacted" response and is
//! canceled.
//!
//! When the hub signals a new revision, every watcher of the stream first takes hold of the
//! next revision it needs (a shared reference into the history), then the watchers are served
//! one by one. A watcher that waits behind another one delivering a large revision so keeps
//! its place even if the history drops that revision meanwhile. Memory: each watcher holds
//! at most one revision beyond the history's own bounds, or one read of the MVCC history.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::access::Needs;
use crate::auth::identity::Credentials;
use crate::backend::KvBackend;
use crate::proto::dengine::kv::v1::{WatchHistoryRequest, query, query_response};
use crate::proto::etcdserverpb::{
    WatchCreateRequest, WatchRequest, WatchResponse, watch_create_request::FilterType,
    watch_request::RequestUnion, watch_server::Watch,
};
use crate::proto::mvccpb;
use crate::shared::Shared;
use crate::watch::{RevisionEvents, WatchFilter, WatchHub};

/// The watch id etcd (3.5) uses for a progress response that covers every watcher of a
/// stream.
const ALL_WATCHERS: i64 = -1;

/// etcd's `cancel_reason` for a watch its user may not read (the text of its gRPC error).
const PERMISSION_DENIED: &str =
    "rpc error: code = PermissionDenied desc = etcdserver: permission denied";

/// The `Watch` service.
#[derive(Debug)]
pub(crate) struct WatchService<B> {
    shared: Arc<Shared<B>>,
}

impl<B> WatchService<B> {
    pub(crate) fn new(shared: Arc<Shared<B>>) -> Self {
        WatchService { shared }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<B: KvBackend> Watch for WatchService<B> {
    type WatchStream = ResponseStream;

    async fn watch(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // As in etcd, the stream's credentials are checked when each watcher is created.
        let credentials = self.shared.credentials(&request);
        let inbound = request.into_inner();
        let buffer = self.shared.hub.config().response_buffer.max(1);
        let (tx, rx) = mpsc::channel(buffer);
        let stream = StreamTask {
            shared: self.shared.clone(),
            hub: self.shared.hub.clone(),
            credentials,
            out: tx,
            watchers: BTreeMap::new(),
            next_id: 0,
        };
        tokio::spawn(stream.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One watcher on a stream.
#[derive(Debug)]
struct Watcher {
    filter: WatchFilter,
    /// The watched range as the client gave it (for a replay from the MVCC history).
    key: Bytes,
    range_end: Bytes,
    /// The next revision to deliver.
    next_revision: i64,
    /// The revision being delivered (`next_revision` or a later one, held so that the
    /// history cannot drop it mid-way) and the index of its next event to look at.
    current: Option<(Arc<RevisionEvents>, usize)>,
    /// etcd's `fragment`: a revision with more than `max_events_per_response` matching
    /// events may be split over several responses.
    fragment: bool,
    progress_notify: bool,
    /// Whether a response went out since the last periodic progress tick.
    sent_since_tick: bool,
}

/// What one look at the history gave a watcher.
enum Gathered {
    /// Events for one response (possibly none: the watcher is caught up).
    Response {
        events: Vec<mvccpb::Event>,
        /// The revision of the last event, or the last revision fully seen.
        revision: i64,
        /// The response ends inside a revision: more of it follows.
        fragment: bool,
        /// More may be waiting after this response.
        more: bool,
    },
    /// The watcher's next revision is no longer in the history.
    Compacted { wanted: i64, oldest: i64 },
}

/// The client went away; the task ends.
struct Closed;

/// The revision of an event (a delete's `kv` carries its revision too).
fn revision_of(event: &mvccpb::Event) -> i64 {
    event.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

struct StreamTask<B> {
    shared: Arc<Shared<B>>,
    hub: WatchHub,
    credentials: Credentials,
    out: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
}

impl<B: KvBackend> StreamTask<B> {
    async fn run(mut self, mut inbound: Streaming<WatchRequest>) {
        let mut revisions = self.hub.subscribe();
        // `interval` refuses a zero period.
        let period = self
            .hub
            .config()
            .progress_interval
            .max(Duration::from_millis(1));
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate
        // As in etcd, a client that half-closes its side keeps receiving events; the task ends
        // when the client goes away (the response stream is dropped) or the stream fails.
        let mut inbound_open = true;
        let hub = self.hub.clone();
        let closed = hub.closed();
        tokio::pin!(closed);
        loop {
            let out = self.out.clone();
            let step = tokio::select! {
                message = inbound.message(), if inbound_open => match message {
                    Ok(Some(req)) => self.handle(req).await,
                    Ok(None) => {
                        inbound_open = false;
                        Ok(())
                    }
                    Err(_) => Err(Closed),
                },
                changed = revisions.changed() => match changed {
                    Ok(()) => self.catch_up_all().await.map(|_| ()),
                    Err(_) => Err(Closed),
                },
                _ = ticker.tick() => self.periodic_progress().await,
                () = out.closed() => Err(Closed),
                () = &mut closed => {
                    let stopping = Status::unavailable(
                        "etcdserver: the member is stopping; watch again on another member",
                    );
                    let _ = self.out.try_send(Err(stopping));
                    Err(Closed)
                }
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn send(&self, mut response: WatchResponse, revision: i64) -> Result<(), Closed> {
        response.header = Some(self.shared.header(revision));
        self.out.send(Ok(response)).await.map_err(|_| Closed)
    }

    async fn handle(&mut self, req: WatchRequest) -> Result<(), Closed> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                // Like etcd, an unknown id gets no answer.
                if self.watchers.remove(&cancel.watch_id).is_some() {
                    let response = WatchResponse {
                        watch_id: cancel.watch_id,
                        canceled: true,
                        ..WatchResponse::default()
                    };
                    self.send(response, self.hub.revision()).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Deliver everything first, so the revision promises that every event up to
                // it has been sent to every watcher of the stream.
                let revision = self.catch_up_all().await?;
                let response = WatchResponse {
                    watch_id: ALL_WATCHERS,
                    ..WatchResponse::default()
                };
                self.send(response, revision).await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, create: WatchCreateRequest) -> Result<(), Closed> {
        let revision = self.hub.revision();
        let refuse = |watch_id: i64, reason: String| WatchResponse {
            watch_id,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..WatchResponse::default()
        };
        // Read access to the watched range, checked against this member's auth state (an
        // expired token, or a user without the permission, gets etcd's refusal).
        let auth = &self.shared.auth;
        let permitted = auth.identify(&self.credentials).and_then(|user| {
            let needs = Needs::read(&create.key, &create.range_end);
            auth.store().authorize(user.as_deref(), &needs)
        });
        if permitted.is_err() {
            let reason = PERMISSION_DENIED.to_string();
            return self.send(refuse(create.watch_id, reason), revision).await;
        }
        let mut filters = Vec::new();
        for f in &create.filters {
            match FilterType::try_from(*f) {
                Ok(f) => filters.push(f),
                Err(_) => {
                    let reason = format!("etcdserver: invalid watch filter type {f}");
                    return self.send(refuse(create.watch_id, reason), revision).await;
                }
            }
        }
        if self.watchers.len() >= self.hub.config().max_watchers_per_stream {
            let reason = format!(
                "etcdserver: too many watchers on this stream (limit {}); open another stream",
                self.hub.config().max_watchers_per_stream
            );
            return self.send(refuse(create.watch_id, reason), revision).await;
        }
        let id = if create.watch_id != 0 {
            if self.watchers.contains_key(&create.watch_id) {
                let reason = "mvcc: duplicate watch ID provided on the WatchStream".to_string();
                return self.send(refuse(create.watch_id, reason), revision).await;
            }
            create.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id
        };
        let next_revision = if create.start_revision > 0 {
            create.start_revision
        } else {
            revision + 1
        };
        let filter = WatchFilter::new(create.key.clone(), create.range_end.clone())
            .with_prev_kv(create.prev_kv)
            .with_filters(filters);
        self.watchers.insert(
            id,
            Watcher {
                filter,
                key: create.key,
                range_end: create.range_end,
                next_revision,
                current: None,
                fragment: create.fragment,
                progress_notify: create.progress_notify,
                sent_since_tick: false,
            },
        );
        let created = WatchResponse {
            watch_id: id,
            created: true,
            ..WatchResponse::default()
        };
        self.send(created, revision).await?;
        // Historical events (or the "compacted" answer) right away.
        self.catch_up(id).await
    }

    /// Catches every watcher up; returns the revision all of them have now seen. Every
    /// watcher first takes hold of its next revision (see the module documentation).
    async fn catch_up_all(&mut self) -> Result<i64, Closed> {
        let revision = self.hub.revision();
        for w in self.watchers.values_mut() {
            if w.current.is_none()
                && let Ok(Some(next)) = self.hub.revision_events(w.next_revision)
            {
                w.current = Some((next, 0));
            }
        }
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            self.catch_up(id).await?;
        }
        Ok(revision)
    }

    /// Sends one watcher every event it has not seen, in responses of at most
    /// `max_events_per_response` events (a revision is split only for a watcher that asked for
    /// fragments); cancels it if its next revision is no longer in the history.
    async fn catch_up(&mut self, id: i64) -> Result<(), Closed> {
        loop {
            match self.gather(id) {
                None => return Ok(()),
                Some(Gathered::Compacted { wanted, oldest }) => {
                    // Behind the event history but not the compaction point: the MVCC history
                    // has those revisions.
                    // At most as many revisions per read as the event history holds events, so
                    // memory stays bounded however far behind the watcher is.
                    let window = i64::try_from(self.hub.config().max_history_events)
                        .unwrap_or(i64::MAX)
                        .max(1);
                    let through = (oldest - 1).min(wanted.saturating_add(window - 1));
                    if wanted > self.hub.compact_revision()
                        && self.replay(id, wanted, through).await?
                    {
                        continue;
                    }
                    // The oldest revision a new watcher can start from: in the event
                    // history, or right after the compaction point from the MVCC history.
                    let oldest = oldest.min(self.hub.compact_revision() + 1);
                    self.watchers.remove(&id);
                    tracing::debug!(
                        watch_id = id,
                        wanted,
                        oldest,
                        "watcher canceled: its next revision has left the event history"
                    );
                    let response = WatchResponse {
                        watch_id: id,
                        canceled: true,
                        compact_revision: oldest,
                        cancel_reason: format!(
                            "etcdserver: mvcc: required revision has been compacted (the watcher \
                             needs revision {wanted}, the oldest kept is {oldest}); watch again \
                             from {oldest} or later"
                        ),
                        ..WatchResponse::default()
                    };
                    return self.send(response, self.hub.revision()).await;
                }
                Some(Gathered::Response {
                    events,
                    revision,
                    fragment,
                    more,
                }) => {
                    if !events.is_empty() {
                        if let Some(w) = self.watchers.get_mut(&id) {
                            w.sent_since_tick = true;
                        }
                        let response = WatchResponse {
                            watch_id: id,
                            events,
                            fragment,
                            ..WatchResponse::default()
                        };
                        self.send(response, revision).await?;
                    }
                    if !more {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Sends watcher `id` the events of revisions `from` to `through`, rebuilt by the state
    /// machine from its MVCC history (a local read), in responses of whole revisions and
    /// about `max_events_per_response` events; then it goes on from the event history.
    /// `false` if the history could not give them (compacted meanwhile, the member not
    /// serving reads): the watcher is then answered "compacted".
    async fn replay(&mut self, id: i64, from: i64, through: i64) -> Result<bool, Closed> {
        let Some(w) = self.watchers.get(&id) else {
            return Ok(false);
        };
        let Ok(user) = self.shared.auth.identify(&self.credentials) else {
            return Ok(false);
        };
        let op = query::Op::WatchHistory(WatchHistoryRequest {
            key: w.key.clone(),
            range_end: w.range_end.clone(),
            from,
            through,
        });
        let events = match self.shared.query(op, user, true).await {
            Ok(query_response::Result::WatchHistory(h)) => h.events,
            Ok(_) | Err(_) => return Ok(false),
        };
        tracing::debug!(
            watch_id = id,
            from,
            through,
            events = events.len(),
            "watcher behind the event history: replayed from the MVCC history"
        );
        // Whole revisions per response: one goes out once it holds the bound and the next
        // event starts another revision.
        let max_events = self.hub.config().max_events_per_response.max(1);
        let mut chunk: Vec<mvccpb::Event> = Vec::new();
        let mut sent = false;
        for event in events.iter().filter(|e| w.filter.matches(e)) {
            let last = chunk.last().map(revision_of);
            if chunk.len() >= max_events && last != Some(revision_of(event)) {
                self.send_events(id, std::mem::take(&mut chunk)).await?;
                sent = true;
            }
            chunk.push(w.filter.deliver(event));
        }
        if !chunk.is_empty() {
            self.send_events(id, chunk).await?;
            sent = true;
        }
        if let Some(w) = self.watchers.get_mut(&id) {
            w.next_revision = through.saturating_add(1);
            w.current = None;
            w.sent_since_tick |= sent;
        }
        Ok(true)
    }

    /// Sends watcher `id` one response with `events` (not empty), at the last one's revision.
    async fn send_events(&self, id: i64, events: Vec<mvccpb::Event>) -> Result<(), Closed> {
        let revision = events.last().map_or(0, revision_of);
        let response = WatchResponse {
            watch_id: id,
            events,
            ..WatchResponse::default()
        };
        self.send(response, revision).await
    }

    /// The events of watcher `id`'s next response, read from the revision it holds and then
    /// from the history, advancing its position; `None` if there is no such watcher.
    fn gather(&mut self, id: i64) -> Option<Gathered> {
        let max_events = self.hub.config().max_events_per_response.max(1);
        let w = self.watchers.get_mut(&id)?;
        let mut events = Vec::new();
        let mut revision = w.next_revision - 1;
        loop {
            let (rev, start) = match w.current.take() {
                Some(held) => held,
                None => match self.hub.revision_events(w.next_revision) {
                    Ok(Some(next)) => (next, 0),
                    Ok(None) => {
                        return Some(Gathered::Response {
                            events,
                            revision,
                            fragment: false,
                            more: false,
                        });
                    }
                    // Deliver what was gathered; the next look answers "compacted".
                    Err(_) if !events.is_empty() => {
                        return Some(Gathered::Response {
                            events,
                            revision,
                            fragment: false,
                            more: true,
                        });
                    }
                    Err(compacted) => {
                        return Some(Gathered::Compacted {
                            wanted: w.next_revision,
                            oldest: compacted.compact_revision,
                        });
                    }
                },
            };
            let mut index = start;
            while index < rev.events.len() {
                if w.fragment && events.len() >= max_events {
                    // Split only if something of the rest is for this watcher: the last
                    // fragment of a split is never empty, so the client is never left waiting
                    // for a fragment that does not come.
                    if !rev.events[index..].iter().any(|e| w.filter.matches(e)) {
                        index = rev.events.len();
                    }
                    break;
                }
                let event = &rev.events[index];
                index += 1;
                if w.filter.matches(event) {
                    events.push(w.filter.deliver(event));
                }
            }
            revision = rev.revision;
            if index < rev.events.len() {
                // A fragment: the rest of this revision goes in the next response.
                w.current = Some((rev, index));
                return Some(Gathered::Response {
                    events,
                    revision,
                    fragment: true,
                    more: true,
                });
            }
            w.next_revision = rev.revision + 1;
            // The last fragment of a split revision ends its response; otherwise whole
            // revisions are added up to the response bound.
            if start > 0 || events.len() >= max_events {
                return Some(Gathered::Response {
                    events,
                    revision,
                    fragment: false,
                    more: true,
                });
            }
        }
    }

    /// Empty responses for `progress_notify` watchers that are caught up and got nothing
    /// since the last tick.
    async fn periodic_progress(&mut self) -> Result<(), Closed> {
        let revision = self.catch_up_all().await?;
        let due: Vec<i64> = self
            .watchers
            .iter_mut()
            .filter_map(|(id, w)| {
                let due = w.progress_notify && !w.sent_since_tick;
                w.sent_since_tick = false;
                due.then_some(*id)
            })
            .collect();
        for id in due {
            let response = WatchResponse {
                watch_id: id,
                ..WatchResponse::default()
            };
            self.send(response, revision).await?;
        }
        Ok(())
    }
}
