//! The actor: the one task that owns a node's protocol state.
//!
//! It runs a single `select!` loop, local work first (API commands, writers
//! reporting room, timers, finished dials), then what connections bring,
//! then new connections. Each turn feeds one input to the [`Node`] and
//! dispatches what it outputs: frames to the connections' bounded send
//! queues, dials to tracked tasks, events to subscribers, answers to
//! callers. No protocol rule lives here, and a turn never awaits a peer.
//!
//! # A full send queue is a decision, not a stall
//! A frame for a connection whose queue is full is kept aside (in order,
//! bounded). While any connection holds frames aside the node stops taking
//! input from connections (TCP then slows the senders) and holds back the
//! answers to local sends (which slows local producers); commands and
//! queries are still handled at once. A connection still full after the
//! backpressure grace stops holding the node back: what does not fit its
//! queue is dropped and counted, and an event says so. A connection that
//! takes nothing for the slow-peer timeout is closed.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rs2p_proto::id::PeerId;
use rs2p_proto::mesh::{self, CloseReason, ConnId, ConnMap, DialId};
use rs2p_proto::node::{self, Input, Node};
use rs2p_proto::sync::{self, Replica};
use rs2p_proto::wire::{Frame, SubFlag};
use rs2p_proto::{Now, RequestId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::clock::Clock;
use crate::command::{Command, Query, Responder};
use crate::config::{
    NodeConfig, ACCEPT_BACKOFF, INBOUND_CHANNEL_CAP, MAX_BATCH_BYTES, MAX_BATCH_FRAMES, RECENT_ERRORS, SHUTDOWN_FLUSH,
};
use crate::conn::{read_loop, wire_len, write_loop, ConnEvent, Lanes, QueueLevel, RoomSignal, Traffic, WriterCmd};
use crate::event::EventHub;
use crate::inbox::InboxSender;
use crate::message::Handler;
use crate::transport::{self, Io, Ready};
use crate::{Event, Message, Status};

/// A connection's frames kept aside may reach this many times its queue's
/// capacity (local senders wait meanwhile; beyond it frames are dropped).
const BACKLOG_FACTOR: usize = 4;
/// Batches of control frames a connection's control lane holds.
const CONTROL_QUEUE_CAP: usize = 256;

/// What one turn of the loop handles.
enum Turn {
    Command(Option<Command>),
    Room(ConnId),
    Timer,
    Ready(Result<Ready, tokio::task::JoinError>),
    Conn(ConnEvent),
    Accept(std::io::Result<(TcpStream, std::net::SocketAddr)>),
    /// The store thread committed rounds up to this one, or failed.
    Committed(Option<Result<u64, String>>),
}

struct ConnHandle {
    tx: mpsc::Sender<WriterCmd>,
    /// The control lane: ahead of payload, never waited for (a full one
    /// drops: the tree and keepalives recover from a lost control frame).
    control: mpsc::Sender<Vec<Frame>>,
    reader: JoinHandle<()>,
    /// Taken at shutdown, to wait for the flush.
    writer: Option<JoinHandle<()>>,
    /// How full the writer's queue is (the actor adds, the writer takes).
    level: Arc<QueueLevel>,
    /// Raised when frames wait aside, so the writer says when it has room.
    wanted: Arc<AtomicBool>,
    /// Writer commands kept aside because the queue was full, in order.
    backlog: VecDeque<WriterCmd>,
    /// Frames in `backlog`.
    backlog_frames: usize,
    /// Since when the queue has been full with no room reported.
    full_since: Option<Instant>,
    /// Full for longer than the grace: no longer holds the node back.
    lagging: bool,
    dropped: u64,
    peer: Option<PeerId>,
}

/// A writer command that did not go to the writer.
enum NotHanded {
    /// The queue is full: keep it aside.
    Full(WriterCmd),
    /// The writer is gone.
    Closed,
}

impl ConnHandle {
    /// Hands `cmd` to the writer if its queue has room under the frame and
    /// byte bounds (codec changes and closes always fit).
    fn hand(&self, cmd: WriterCmd, max_frames: usize, max_bytes: usize) -> Result<(), NotHanded> {
        let counted = match &cmd {
            WriterCmd::Frames(f) => {
                let (n, bytes) = (f.len(), wire_len(f));
                if !self.level.fits(n, bytes, max_frames, max_bytes) {
                    return Err(NotHanded::Full(cmd));
                }
                self.level.add(n, bytes);
                Some((n, bytes))
            }
            _ => None,
        };
        match self.tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Some((n, bytes)) = counted {
                    self.level.sub(n, bytes);
                }
                match e {
                    mpsc::error::TrySendError::Full(cmd) => Err(NotHanded::Full(cmd)),
                    mpsc::error::TrySendError::Closed(_) => Err(NotHanded::Closed),
                }
            }
        }
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        // The writer ends by itself once its queue is drained and closed.
        self.reader.abort();
    }
}

pub(crate) struct Actor {
    node: Node,
    cfg: NodeConfig,
    clock: Clock,
    listener: TcpListener,
    cmd_rx: mpsc::Receiver<Command>,
    weak_cmd: mpsc::WeakSender<Command>,
    events: EventHub,
    /// Closes the receive queue when the actor ends, however it ends.
    inbox: InboxSender,
    /// This step's messages for the inbox, handed over in one go at the end
    /// of the step.
    to_inbox: Vec<Message>,
    /// Room the inbox had at the start of this step, minus `to_inbox`.
    inbox_room: usize,
    conns: ConnMap<ConnHandle>,
    /// Frames gathered per connection during one flush (kept to reuse its
    /// allocation).
    batches: ConnMap<(Vec<Frame>, usize)>,
    /// Control frames gathered per connection during one flush.
    control: ConnMap<Vec<Frame>>,
    /// What crossed the connections, both ways.
    traffic: Arc<Traffic>,
    next_conn: u64,
    conn_tx: mpsc::Sender<ConnEvent>,
    conn_rx: mpsc::Receiver<ConnEvent>,
    room_tx: mpsc::Sender<ConnId>,
    room_rx: mpsc::Receiver<ConnId>,
    /// Dials and TLS accepts under way.
    tasks: JoinSet<Ready>,
    /// Incoming connections in their TLS handshake (count toward the
    /// pending-handshake cap).
    tls_pending: usize,
    next_request: u64,
    pending: HashMap<RequestId, Responder>,
    /// Connections whose frames wait aside and that still hold the node
    /// back (not lagging).
    holding: Vec<ConnId>,
    /// Connections whose queue is full (holding or lagging).
    full: Vec<ConnId>,
    /// Answers to local sends, held while the node is held back.
    held: Vec<(Responder, Result<node::Reply, node::CommandError>)>,
    /// The durable dictionary's store thread, with a data directory.
    store: Option<crate::store::StoreLink>,
    /// Its thread, joined on shutdown (what it was given gets written).
    store_thread: Option<std::thread::JoinHandle<()>>,
    /// With a data directory: where the peer list is kept, and the peers
    /// remembered from the last run (told to the mesh when it starts).
    peers_dir: Option<std::path::PathBuf>,
    remembered: Vec<(mesh::PeerAddr, PeerId)>,
    /// Dictionary writes answered once the round holding them is on disk.
    durable_waiting: std::collections::VecDeque<(u64, Responder, Result<node::Reply, node::CommandError>)>,
    accept_resume: Option<Instant>,
    handlers: Vec<Handler>,
    recent_errors: VecDeque<String>,
    dropped_messages: u64,
    dropped_frames: u64,
    dropped_control: u64,
    /// User broadcasts handed to the application (handlers or the queue).
    delivered_broadcasts: u64,
    slow_peers: u64,
    refused: u64,
}

impl Actor {
    pub(crate) fn new(
        cfg: NodeConfig,
        listener: TcpListener,
        cmd_rx: mpsc::Receiver<Command>,
        weak_cmd: mpsc::WeakSender<Command>,
        events: EventHub,
        inbox: InboxSender,
        store: Option<crate::store::Init>,
    ) -> Self {
        let (conn_tx, conn_rx) = mpsc::channel(INBOUND_CHANNEL_CAP);
        // At most one entry per connection (see RoomSignal).
        let (room_tx, room_rx) = mpsc::channel(cfg.driver.max_connections + 1);
        let me = cfg.mesh.id.clone();
        let mut replica = cfg.sync.clone().map(|c| Replica::new(me, c, cfg.seed ^ 0x5157));
        let peers_dir = store.as_ref().map(|init| init.dir.clone());
        let remembered = peers_dir.as_deref().map(crate::store::load_peers).unwrap_or_default();
        let (store, store_thread) = match (store, replica.as_mut()) {
            (Some(init), Some(r)) => {
                let loaded = init.opened.records.len();
                r.restore(init.opened.records);
                r.track_changes(true);
                tracing::info!(dir = %init.dir.display(), keys = r.len(), entries = loaded, fsync = ?init.fsync, "dictionary loaded");
                let (link, thread) = crate::store::StoreLink::start(init.opened.db, init.fsync, init.dir);
                (Some(link), Some(thread))
            }
            _ => (None, None),
        };
        let node = Node::new(mesh::Mesh::new(cfg.mesh.clone(), cfg.seed), replica);
        Actor {
            node,
            cfg,
            clock: Clock::new(),
            listener,
            cmd_rx,
            weak_cmd,
            events,
            inbox,
            to_inbox: Vec::new(),
            inbox_room: 0,
            conns: ConnMap::default(),
            batches: ConnMap::default(),
            control: ConnMap::default(),
            traffic: Arc::new(Traffic::default()),
            next_conn: 0,
            conn_tx,
            conn_rx,
            room_tx,
            room_rx,
            tasks: JoinSet::new(),
            tls_pending: 0,
            next_request: 0,
            pending: HashMap::new(),
            holding: Vec::new(),
            full: Vec::new(),
            held: Vec::new(),
            store,
            store_thread,
            peers_dir,
            remembered,
            durable_waiting: std::collections::VecDeque::new(),
            accept_resume: None,
            handlers: Vec::new(),
            recent_errors: VecDeque::new(),
            dropped_messages: 0,
            dropped_frames: 0,
            dropped_control: 0,
            delivered_broadcasts: 0,
            slow_peers: 0,
            refused: 0,
        }
    }

    /// The earliest time the loop must wake for timers: the node's next
    /// deadline, the listener's rest, full queues' grace and timeout.
    fn next_wake(&self) -> Option<Instant> {
        let node = self.node.poll_timeout().map(|ms| self.clock.instant(ms));
        let queues = self.full.iter().filter_map(|c| {
            let h = self.conns.get(c)?;
            let since = h.full_since?;
            Some(if h.lagging {
                since + self.cfg.driver.slow_peer_timeout
            } else {
                since + self.cfg.driver.backpressure_grace
            })
        });
        node.into_iter().chain(self.accept_resume).chain(queues).min()
    }

    pub(crate) async fn run(mut self) {
        let far = || Instant::now() + std::time::Duration::from_secs(86_400);
        let sleep = tokio::time::sleep_until(far());
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        let remembered = std::mem::take(&mut self.remembered);
        if !remembered.is_empty() {
            tracing::info!(peers = remembered.len(), "redialing the peers of the last run");
            self.handle(Input::Command {
                request: RequestId(0),
                command: mesh::Command::Remember { peers: remembered }.into(),
            });
            self.flush();
        }
        loop {
            let wake = self.next_wake();
            if wake != armed {
                sleep.as_mut().reset(wake.unwrap_or_else(far));
                armed = wake;
            }
            let accepting = self.accept_resume.is_none();
            let reading = self.holding.is_empty();
            let storing = self.store.is_some();
            let committed = self.store.as_mut().map(|s| &mut s.committed);
            let input = tokio::select! {
                biased;
                r = async { committed.expect("storing").recv().await }, if storing => Turn::Committed(r),
                cmd = self.cmd_rx.recv() => Turn::Command(cmd),
                Some(conn) = self.room_rx.recv() => Turn::Room(conn),
                () = &mut sleep, if armed.is_some() => Turn::Timer,
                Some(r) = self.tasks.join_next(), if !self.tasks.is_empty() => Turn::Ready(r),
                Some(ev) = self.conn_rx.recv(), if reading => Turn::Conn(ev),
                acc = self.listener.accept(), if accepting => Turn::Accept(acc),
            };
            if matches!(input, Turn::Timer) {
                // Re-armed from next_wake on the next turn.
                armed = None;
            }
            // The replica's change events cost a copy of each changed value:
            // built only while someone listens, checked now rather than
            // before the wait (a subscriber may have come meanwhile).
            let listening = self.has_listeners();
            self.node.report_changes(listening);
            match input {
                Turn::Command(Some(Command::Shutdown { reply })) => {
                    self.shutdown().await;
                    let _ = reply.send(());
                    return;
                }
                Turn::Command(None) => {
                    self.shutdown().await;
                    return;
                }
                Turn::Command(Some(cmd)) => self.on_command(cmd),
                Turn::Room(conn) => self.on_room(conn),
                Turn::Timer => self.on_timer(),
                Turn::Ready(Ok(r)) => self.on_ready(r),
                Turn::Ready(Err(e)) => tracing::error!("a dial task failed: {e}"),
                Turn::Conn(ev) => self.on_conn_event(ev),
                Turn::Accept(acc) => self.on_accept(acc),
                Turn::Committed(r) => self.on_committed(r),
            }
            self.flush();
        }
    }

    fn now(&self) -> Now {
        self.clock.now()
    }

    fn handle(&mut self, input: Input) {
        let now = self.now();
        self.node.handle(now, input);
    }

    /// Whether anyone subscribed to events and still listens.
    fn has_listeners(&self) -> bool {
        let listening = |c: &std::sync::OnceLock<tokio::sync::broadcast::Sender<Event>>| {
            c.get().is_some_and(|e| e.receiver_count() > 0)
        };
        listening(&self.events.all) || listening(&self.events.without_messages)
    }

    /// Whether anyone listens to the stream that carries messages.
    fn has_message_listeners(&self) -> bool {
        self.events.all.get().is_some_and(|e| e.receiver_count() > 0)
    }

    // ----- turns ------------------------------------------------------------

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Node { command, reply } => {
                self.next_request += 1;
                let request = RequestId(self.next_request);
                self.pending.insert(request, reply);
                self.handle(Input::Command { request, command });
            }
            Command::Query(q) => self.on_query(q),
            Command::Attach { stream, reply } => {
                let conn = self.open(Io::Attached(stream));
                self.handle(Input::Incoming { conn });
                let _ = reply.send(());
            }
            Command::RegisterHandler { handler, reply } => {
                self.handlers.push(handler);
                let _ = reply.send(());
            }
            Command::Shutdown { .. } => unreachable!("handled in run"),
        }
    }

    fn on_query(&mut self, q: Query) {
        let replica = self.node.replica();
        match q {
            Query::Peers(reply) => {
                let _ = reply.send(self.node.mesh().peers());
            }
            Query::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Query::Get { key, reply } => {
                let v = replica.and_then(|r| r.get(&key).and_then(|v| r.meta(&key).map(|(o, t)| (v, o, t))));
                let _ = reply.send(v);
            }
            Query::Items(reply) => {
                let items = replica
                    .map(|r| r.items().map(|(k, v, ver)| (k.clone(), v, ver.owner.clone(), ver.secs())).collect())
                    .unwrap_or_default();
                let _ = reply.send(items);
            }
            Query::Len(reply) => {
                let _ = reply.send(replica.map_or(0, Replica::len));
            }
        }
    }

    fn status(&self) -> Status {
        let mesh = self.node.mesh();
        Status {
            nominal: self.recent_errors.is_empty(),
            recent_errors: self.recent_errors.iter().cloned().collect(),
            stats: mesh.stats(),
            peers: mesh.peer_count(),
            connections: mesh.connection_count(),
            dropped_messages: self.dropped_messages,
            dropped_frames: self.dropped_frames,
            dropped_control: self.dropped_control,
            slow_peers: self.slow_peers,
            refused_connections: self.refused,
            delivered: self.delivered_broadcasts,
            duplicates: mesh.stats().duplicates,
            frames_in: self.traffic.frames_in.load(Ordering::Relaxed),
            bytes_in: self.traffic.bytes_in.load(Ordering::Relaxed),
            frames_out: self.traffic.frames_out.load(Ordering::Relaxed),
            bytes_out: self.traffic.bytes_out.load(Ordering::Relaxed),
            tree: mesh.tree_stats(),
            queued_messages: self.inbox.0.len(),
            queued_frames: self.conns.values().map(|h| h.level.frames.load(Ordering::Relaxed) + h.backlog_frames).sum(),
            queued_bytes: self.conns.values().map(|h| h.level.bytes.load(Ordering::Relaxed)).sum(),
            sync: self.node.replica().map(|r| crate::event::SyncStatus { keys: r.len(), stats: r.stats() }),
        }
    }

    fn on_ready(&mut self, r: Ready) {
        match r {
            Ready::Dialed { dial, result: Ok(io) } => {
                if self.conns.len() >= self.cfg.driver.max_connections {
                    self.handle(Input::DialFailed { dial, reason: CloseReason::ConnectionLimit });
                    return;
                }
                let conn = self.open(io);
                self.handle(Input::Dialed { dial, conn });
            }
            Ready::Dialed { dial, result: Err(reason) } => self.handle(Input::DialFailed { dial, reason }),
            Ready::Accepted { from, result } => {
                self.tls_pending -= 1;
                match result {
                    Ok(io) => {
                        let conn = self.open(io);
                        self.handle(Input::Incoming { conn });
                    }
                    Err(reason) => {
                        tracing::info!(%from, "incoming connection failed: {reason}");
                        self.note_error(format!("incoming from {from}: {reason}"));
                        self.emit(Event::ConnectFailed { addr: None, reason });
                    }
                }
            }
        }
    }

    fn on_conn_event(&mut self, ev: ConnEvent) {
        match ev {
            ConnEvent::Packets(conn, batch) => {
                let now = self.now();
                for packet in batch {
                    self.node.handle(now, Input::Packet { conn, packet });
                }
            }
            ConnEvent::Closed(conn, reason) => {
                if self.forget_conn(conn).is_some() {
                    if reason.is_misbehaviour() {
                        self.note_error(format!("connection {}: {reason}", conn.0));
                    }
                    self.handle(Input::Closed { conn, reason });
                }
            }
        }
    }

    fn on_accept(&mut self, acc: std::io::Result<(TcpStream, std::net::SocketAddr)>) {
        let (stream, from) = match acc {
            Ok(a) => a,
            Err(e) => {
                // Typically out of file descriptors: rest instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                self.accept_resume = Some(Instant::now() + ACCEPT_BACKOFF);
                return;
            }
        };
        if self.conns.len() >= self.cfg.driver.max_connections {
            let max = self.cfg.driver.max_connections;
            tracing::warn!(%from, "refusing connection: limit of {max} connections reached");
            self.refused += 1;
            return;
        }
        if self.node.mesh().handshaking_count() + self.tls_pending >= self.cfg.driver.max_pending {
            let max = self.cfg.driver.max_pending;
            tracing::warn!(%from, "refusing connection: {max} connections still handshaking");
            self.refused += 1;
            return;
        }
        let _ = stream.set_nodelay(true);
        match self.cfg.driver.tls.clone() {
            None => {
                let conn = self.open(Io::Plain(stream));
                self.handle(Input::Incoming { conn });
            }
            Some(tls) => {
                // The TLS handshake runs in its own task, under the
                // handshake deadline, and counts as pending.
                self.tls_pending += 1;
                self.tasks.spawn(transport::accept_tls(stream, from, tls, self.cfg.handshake_timeout()));
            }
        }
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if self.accept_resume.is_some_and(|t| t <= now) {
            self.accept_resume = None;
        }
        if self.node.poll_timeout().is_some_and(|ms| self.clock.instant(ms) <= now) {
            if !self.holding.is_empty() {
                // We stopped reading: a peer's silence is ours (keepalives).
                self.handle(Input::NotReading);
            }
            self.handle(Input::Timeout);
        }
        let full = self.full.clone();
        for conn in full {
            let Some(h) = self.conns.get_mut(&conn) else { continue };
            let Some(since) = h.full_since else { continue };
            if since + self.cfg.driver.slow_peer_timeout <= now {
                self.slow_peers += 1;
                tracing::warn!(conn = conn.0, peer = ?h.peer, "disconnecting slow peer: it took nothing from its queue");
                self.forget_conn(conn);
                self.handle(Input::Closed { conn, reason: CloseReason::SlowPeer });
            } else if !h.lagging && since + self.cfg.driver.backpressure_grace <= now {
                // Stop waiting for it: drop what waits aside (keeping codec
                // changes and the close, which must stay in order).
                h.lagging = true;
                let dropped: usize = h
                    .backlog
                    .iter()
                    .map(|c| match c {
                        WriterCmd::Frames(f) => f.len(),
                        _ => 0,
                    })
                    .sum();
                h.backlog.retain(|c| !matches!(c, WriterCmd::Frames(_)));
                h.backlog_frames = 0;
                h.dropped += dropped as u64;
                self.dropped_frames += dropped as u64;
                let (peer, total) = (h.peer.clone(), h.dropped);
                tracing::warn!(conn = conn.0, ?peer, dropped, "peer lagging: its queue stayed full, dropping frames");
                self.holding.retain(|&c| c != conn);
                if let Some(peer) = peer {
                    self.emit(Event::PeerLagging { peer, dropped_frames: total });
                }
            }
        }
        self.release_if_free();
    }

    /// A writer took a command: its queue has room again.
    fn on_room(&mut self, conn: ConnId) {
        let (max_frames, max_bytes) = (self.cfg.driver.send_queue_cap, self.cfg.driver.send_queue_bytes);
        let Some(h) = self.conns.get_mut(&conn) else { return };
        h.lagging = false;
        h.full_since = None;
        while let Some(cmd) = h.backlog.pop_front() {
            let frames = match &cmd {
                WriterCmd::Frames(f) => f.len(),
                _ => 0,
            };
            match h.hand(cmd, max_frames, max_bytes) {
                Ok(()) => h.backlog_frames -= frames,
                Err(NotHanded::Full(cmd)) => {
                    h.backlog.push_front(cmd);
                    h.wanted.store(true, Ordering::Release);
                    h.full_since = Some(Instant::now());
                    return;
                }
                Err(NotHanded::Closed) => {
                    h.backlog.clear();
                    h.backlog_frames = 0;
                    break;
                }
            }
        }
        self.holding.retain(|&c| c != conn);
        self.full.retain(|&c| c != conn);
        self.release_if_free();
    }

    /// Answers the held sends once nothing holds the node back.
    fn release_if_free(&mut self) {
        if self.holding.is_empty() {
            for (responder, result) in self.held.drain(..) {
                responder.answer(result);
            }
        }
    }

    // ----- connections ------------------------------------------------------

    fn open(&mut self, io: Io) -> ConnId {
        match io {
            Io::Plain(stream) => {
                let _ = stream.set_nodelay(true);
                let (rd, wr) = stream.into_split();
                self.open_split(rd, wr)
            }
            Io::Tls(stream) => {
                let (rd, wr) = tokio::io::split(*stream);
                self.open_split(rd, wr)
            }
            Io::Attached(stream) => {
                let (rd, wr) = tokio::io::split(stream);
                self.open_split(rd, wr)
            }
        }
    }

    fn open_split<R, W>(&mut self, rd: R, wr: W) -> ConnId
    where
        R: crate::conn::ReadHalf,
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        // The payload queue is bounded in frames and bytes by the actor
        // (QueueLevel); its channel never fills before those bounds.
        let (tx, rx) = mpsc::channel(self.cfg.send_queue_batches());
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE_CAP);
        let reader = tokio::spawn(read_loop(
            conn,
            rd,
            self.cfg.driver.limits,
            self.cfg.mesh.compression.clone(),
            self.cfg.driver.stall_timeout,
            self.conn_tx.clone(),
            self.traffic.clone(),
        ));
        let wanted = Arc::new(AtomicBool::new(false));
        let level = Arc::new(QueueLevel::default());
        let room = RoomSignal { level: level.clone(), wanted: wanted.clone(), tx: self.room_tx.clone() };
        let lanes = Lanes { data: rx, control: control_rx };
        let writer = tokio::spawn(write_loop(conn, wr, lanes, self.conn_tx.clone(), room, self.traffic.clone()));
        let handle = ConnHandle {
            tx,
            control: control_tx,
            reader,
            writer: Some(writer),
            level,
            wanted,
            backlog: VecDeque::new(),
            backlog_frames: 0,
            full_since: None,
            lagging: false,
            dropped: 0,
            peer: None,
        };
        self.conns.insert(conn, handle);
        conn
    }

    /// Drops the actor's side of a connection (the writer still flushes what
    /// is queued, then closes the socket).
    fn forget_conn(&mut self, conn: ConnId) -> Option<ConnHandle> {
        self.holding.retain(|&c| c != conn);
        self.full.retain(|&c| c != conn);
        self.batches.remove(&conn);
        self.control.remove(&conn);
        let h = self.conns.remove(&conn);
        self.release_if_free();
        h
    }

    /// Hands a command to a connection's writer without waiting: a full
    /// queue keeps it aside (see the module docs).
    fn queue_for_writer(&mut self, conn: ConnId, cmd: WriterCmd) {
        let (max_frames, max_bytes) = (self.cfg.driver.send_queue_cap, self.cfg.driver.send_queue_bytes);
        let cap = max_frames * BACKLOG_FACTOR;
        let Some(h) = self.conns.get_mut(&conn) else { return };
        let cmd = if h.backlog.is_empty() {
            match h.hand(cmd, max_frames, max_bytes) {
                Ok(()) | Err(NotHanded::Closed) => return,
                Err(NotHanded::Full(cmd)) => cmd,
            }
        } else {
            cmd // behind what already waits
        };
        h.wanted.store(true, Ordering::Release);
        if h.full_since.is_none() {
            h.full_since = Some(Instant::now());
            self.full.push(conn);
        }
        let frames = match &cmd {
            WriterCmd::Frames(f) => f.len(),
            _ => 0,
        };
        if frames > 0 && (h.lagging || h.backlog_frames + frames > cap) {
            h.dropped += frames as u64;
            self.dropped_frames += frames as u64;
            return;
        }
        h.backlog_frames += frames;
        h.backlog.push_back(cmd);
        if !h.lagging && !self.holding.contains(&conn) {
            self.holding.push(conn);
        }
    }

    fn close(&mut self, conn: ConnId) {
        if let Some(h) = self.forget_conn(conn) {
            // Queued frames are still written; then the socket closes.
            let _ = h.tx.try_send(WriterCmd::Close);
        }
    }

    // ----- outputs ----------------------------------------------------------

    fn flush(&mut self) {
        // Frames are gathered per connection and handed to each writer as
        // one batch per step (one channel operation instead of one per
        // frame); a batch that reaches the frame or byte bound goes at once,
        // which keeps the batch-bounded send queues bounded in bytes.
        let mut batches = std::mem::take(&mut self.batches);
        self.inbox_room = self.inbox.0.room();
        self.store_changes();
        while let Some(o) = self.node.poll_output() {
            match o {
                node::Output::Mesh(mesh::Output::Send { conn, frame, lane: mesh::Lane::Control }) => {
                    self.control.entry(conn).or_default().push(frame);
                }
                node::Output::Mesh(mesh::Output::Send { conn, frame, lane: mesh::Lane::Announce })
                    if self.conns.get(&conn).is_some_and(|h| h.lagging) =>
                {
                    // Its payload is being dropped: the announcement must
                    // not be, or the peer could not ask for what it missed.
                    self.control.entry(conn).or_default().push(frame);
                }
                node::Output::Mesh(mesh::Output::Send {
                    conn,
                    frame,
                    lane: mesh::Lane::Payload | mesh::Lane::Announce,
                }) => {
                    let (frames, bytes) = batches.entry(conn).or_default();
                    *bytes += frame.wire_bytes().len();
                    frames.push(frame);
                    if frames.len() >= MAX_BATCH_FRAMES || *bytes >= MAX_BATCH_BYTES {
                        let full = std::mem::take(frames);
                        *bytes = 0;
                        self.queue_for_writer(conn, WriterCmd::Frames(full));
                    }
                }
                node::Output::Mesh(mesh::Output::Configure { conn, codec }) => {
                    // Frames queued before the codec change go first.
                    if let Some((b, _)) = batches.remove(&conn) {
                        self.queue_for_writer(conn, WriterCmd::Frames(b));
                    }
                    self.queue_for_writer(conn, WriterCmd::Codec(codec));
                }
                node::Output::Mesh(mesh::Output::Dial { dial, addr }) => self.spawn_dial(dial, addr),
                node::Output::Mesh(mesh::Output::Close { conn, reason }) => {
                    if let Some((b, _)) = batches.remove(&conn) {
                        self.queue_for_writer(conn, WriterCmd::Frames(b));
                    }
                    // Control frames for a closing link (a goodbye) go after
                    // its payload, on the queue the close itself takes.
                    if let Some(c) = self.control.remove(&conn) {
                        self.queue_for_writer(conn, WriterCmd::Frames(c));
                    }
                    if reason.is_misbehaviour() {
                        self.note_error(format!("connection {}: {reason}", conn.0));
                    }
                    self.close(conn);
                }
                node::Output::Mesh(mesh::Output::Event(e)) => self.on_event(e),
                node::Output::Mesh(mesh::Output::Reply { .. }) => {
                    unreachable!("the node lifts mesh replies into node::Output::Reply")
                }
                node::Output::Sync(e) => self.emit(match e {
                    sync::Event::Update { key, value, owner, timestamp } => {
                        Event::Update { key, value, owner, timestamp }
                    }
                    sync::Event::Delete { key } => Event::Delete { key },
                }),
                node::Output::Reply { request, result } => {
                    if let Some(responder) = self.pending.remove(&request) {
                        let durable = matches!(result, Ok(node::Reply::Sync(_)));
                        if let Some(round) = self.store.as_ref().filter(|_| durable).and_then(|s| s.must_wait()) {
                            // Answered once the round holding it is on disk.
                            self.durable_waiting.push_back((round, responder, result));
                        } else if responder.is_send() && !self.holding.is_empty() {
                            self.held.push((responder, result));
                        } else {
                            responder.answer(result);
                        }
                    }
                }
            }
        }
        for (conn, (b, _)) in batches.iter_mut() {
            if !b.is_empty() {
                let full = std::mem::take(b);
                self.queue_for_writer(*conn, WriterCmd::Frames(full));
            }
        }
        self.batches = batches;
        for (conn, frames) in self.control.iter_mut() {
            if frames.is_empty() {
                continue;
            }
            let batch = std::mem::take(frames);
            let n = batch.len() as u64;
            if let Some(h) = self.conns.get(conn) {
                if h.control.try_send(batch).is_err() {
                    self.dropped_control += n;
                }
            }
        }
        // One lock and one wake-up for the whole step.
        self.dropped_messages += self.inbox.0.push(&mut self.to_inbox) as u64;
    }

    fn spawn_dial(&mut self, dial: DialId, addr: mesh::PeerAddr) {
        let timeout = self.cfg.driver.dial_timeout;
        let tls = self.cfg.driver.tls.clone();
        self.tasks.spawn(transport::dial(dial, addr, timeout, tls));
    }

    /// Publishes an event, if anyone ever subscribed.
    fn emit(&self, e: Event) {
        if !matches!(e, Event::Message(_)) {
            if let Some(tx) = self.events.without_messages.get() {
                let _ = tx.send(e.clone());
            }
        }
        if let Some(tx) = self.events.all.get() {
            let _ = tx.send(e);
        }
    }

    fn note_error(&mut self, e: String) {
        if self.recent_errors.len() >= RECENT_ERRORS {
            self.recent_errors.pop_front();
        }
        self.recent_errors.push_back(e);
    }

    fn on_event(&mut self, e: mesh::Event) {
        match e {
            mesh::Event::PeerUp { conn, peer, addr, outgoing, first, replaces, .. } => {
                if let Some(h) = self.conns.get_mut(&conn) {
                    h.peer = Some(peer.clone());
                }
                if replaces {
                    return;
                }
                if first {
                    self.emit(Event::Connected { peer: peer.clone() });
                }
                self.emit(Event::PeerUp { peer, addr, outgoing });
                if self.peers_dir.is_some() {
                    let peers: Vec<_> =
                        self.node.mesh().peers().into_iter().filter_map(|p| Some((p.addr?, p.id))).collect();
                    if let Some(store) = self.store.as_mut() {
                        store.save_peers(peers);
                    }
                }
            }
            mesh::Event::PeerDown { peer, reason, .. } => self.emit(Event::PeerDown { peer, reason }),
            mesh::Event::ConnectFailed { addr, reason, .. } => self.emit(Event::ConnectFailed { addr, reason }),
            mesh::Event::Message(d) => {
                let for_application = d.for_application || self.cfg.driver.queue_all_subflags;
                let via = self.conns.get(&d.conn).and_then(|h| h.peer.clone());
                self.on_message(Message::new(d.packet, via, d.verified, &self.weak_cmd), for_application)
            }
        }
    }

    fn on_message(&mut self, msg: Message, for_application: bool) {
        let user_broadcast = msg.kind() == crate::MessageKind::Broadcast && SubFlag::is_user(msg.subflag());
        for h in &self.handlers {
            match std::panic::catch_unwind(AssertUnwindSafe(|| h(&msg))) {
                Ok(true) => {
                    self.delivered_broadcasts += u64::from(user_broadcast);
                    return;
                }
                Ok(false) => {}
                Err(_) => tracing::error!("a message handler panicked; continuing with the next"),
            }
        }
        if !for_application {
            tracing::debug!(subflag = msg.subflag(), "not queueing a message with a protocol sub-flag");
            return;
        }
        if self.inbox_room == 0 {
            self.dropped_messages += 1;
            return;
        }
        self.inbox_room -= 1;
        self.delivered_broadcasts += u64::from(user_broadcast);
        if self.has_message_listeners() {
            self.emit(Event::Message(msg.clone()));
        }
        self.to_inbox.push(msg);
    }

    async fn shutdown(&mut self) {
        let now = self.now();
        self.node.handle(now, Input::Command { request: RequestId(0), command: mesh::Command::Shutdown.into() });
        self.flush();
        self.tasks.abort_all();
        // Held answers: the node is stopping, their frames may not go out.
        self.held.clear();
        let handles: Vec<ConnHandle> = self.conns.drain().map(|(_, h)| h).collect();
        let mut writers = JoinSet::new();
        for mut h in handles {
            let _ = h.tx.try_send(WriterCmd::Close);
            if let Some(w) = h.writer.take() {
                writers.spawn(async move {
                    let _ = w.await;
                });
            }
        }
        let _ = tokio::time::timeout(SHUTDOWN_FLUSH, async { while writers.join_next().await.is_some() {} }).await;
        self.pending.clear();
        // The store thread writes what it was given, then stops.
        if let Some(store) = self.store.take() {
            let thread = self.store_thread.take();
            let finish = tokio::task::spawn_blocking(move || {
                store.finish();
                thread.map(std::thread::JoinHandle::join)
            });
            let _ = tokio::time::timeout(SHUTDOWN_FLUSH, finish).await;
        }
        self.durable_waiting.clear();
    }

    // ----- the durable dictionary -------------------------------------------

    /// Hands this turn's dictionary changes to the store thread.
    fn store_changes(&mut self) {
        let Some(store) = self.store.as_mut() else { return };
        let Some(replica) = self.node.replica_mut() else { return };
        let changes: crate::store::Changes =
            replica.take_changes().into_iter().map(|(key, rec)| (key, rec.map(|r| crate::store::encode(&r)))).collect();
        if changes.is_empty() {
            store.retry();
        } else {
            store.submit(changes);
        }
    }

    /// The store thread committed up to a round (or failed): answer the
    /// writes that waited for it, and hand over what has waited meanwhile.
    fn on_committed(&mut self, r: Option<Result<u64, String>>) {
        let Some(store) = self.store.as_mut() else { return };
        match r {
            Some(Ok(round)) => {
                store.committed_round = round;
                while self.durable_waiting.front().is_some_and(|(r, ..)| *r <= round) {
                    let Some((_, responder, result)) = self.durable_waiting.pop_front() else { break };
                    responder.answer(result);
                }
                store.retry();
            }
            Some(Err(reason)) => {
                // Nothing waiting is known to be on disk: fail them all (the
                // writes are applied in memory, but not acknowledged).
                store.retry();
                let path = store.path.clone();
                for (_, responder, _) in self.durable_waiting.drain(..) {
                    responder.fail(crate::Error::Store { path: path.clone(), reason: reason.clone() });
                }
                self.note_error(format!("dictionary store: {reason}"));
            }
            None => {
                tracing::error!("the dictionary store thread stopped");
                self.store = None;
                for (_, responder, _) in self.durable_waiting.drain(..) {
                    responder.fail(crate::Error::Internal("the dictionary store stopped"));
                }
            }
        }
    }
}
