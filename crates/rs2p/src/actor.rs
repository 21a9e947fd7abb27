//! The actor: the one task that owns a node's protocol state.
//!
//! It runs a single `select!` loop, local work first (API commands, timers,
//! dial results), then what connections bring, then new connections. After
//! each step it drains the state machine's outputs: frames go to the
//! connections' bounded send queues, dials become short tasks, events go to
//! subscribers.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rs2p_proto::id::{MsgId, PeerId};
use rs2p_proto::mesh::{self, CloseReason, ConnId, ConnMap, DialId, Mesh, Output, PeerAddr, PeerInfo, ReplyRoute};
use rs2p_proto::node::{self, Node};
use rs2p_proto::sync::{self, Replica, WriteError};
use rs2p_proto::wire::{subflag, Compression, Frame, Limits};
use rs2p_proto::{Now, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::conn::{read_loop, write_loop, ConnEvent, WriterCmd};
use crate::inbox::InboxSender;
use crate::socket::{Event, Handler, Message, Status, MAX_BATCH_BYTES, MAX_BATCH_FRAMES};
use crate::Error;

/// How often the state machine gets a tick (expiry, deadlines, upkeep).
pub(crate) const TICK: Duration = Duration::from_millis(250);
/// Protocol errors remembered for [`Status::recent_errors`].
const RECENT_ERRORS: usize = 32;
/// Capacity of the channel that returns dial results.
const DIAL_CHANNEL_CAP: usize = 64;

/// Driver settings that the pure state machine does not need.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) limits: Limits,
    pub(crate) compression: Vec<Compression>,
    pub(crate) max_connections: usize,
    pub(crate) max_pending: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) tls: Option<crate::tls::Tls>,
    pub(crate) send_queue_cap: usize,
    pub(crate) stall_timeout: Duration,
    pub(crate) slow_peer_timeout: Duration,
    pub(crate) dial_timeout: Duration,
}

/// Requests from handles to the actor; each carries its reply channel.
pub(crate) enum Command {
    Connect { addr: PeerAddr, expected: Option<PeerId>, reply: oneshot::Sender<Result<PeerId, Error>> },
    Broadcast { subflag: u64, packets: Vec<Value>, reply: oneshot::Sender<Result<MsgId, Error>> },
    BroadcastMany { messages: Vec<Vec<Value>>, reply: oneshot::Sender<Result<Vec<MsgId>, Error>> },
    Whisper { peer: PeerId, packets: Vec<Value>, reply: oneshot::Sender<Result<MsgId, Error>> },
    Reply { to: PeerId, packets: Vec<Value>, reply: oneshot::Sender<Result<ReplyRoute, Error>> },
    RequestPeers { reply: oneshot::Sender<()> },
    Disconnect { peer: PeerId, reply: oneshot::Sender<Result<(), Error>> },
    Peers { reply: oneshot::Sender<Vec<PeerInfo>> },
    Status { reply: oneshot::Sender<Status> },
    RegisterHandler { handler: Handler, reply: oneshot::Sender<()> },
    Shutdown { reply: oneshot::Sender<()> },
    Sync(SyncCommand),
}

/// Requests on the replicated dictionary.
pub(crate) enum SyncCommand {
    Set { pairs: Vec<(Bytes, Value)>, reply: oneshot::Sender<Result<(), Error>> },
    Delete { key: Bytes, reply: oneshot::Sender<Result<(), Error>> },
    Delta { key: Bytes, delta: Vec<(Value, Value)>, reply: oneshot::Sender<Result<(), Error>> },
    Get { key: Bytes, reply: oneshot::Sender<Option<(Value, PeerId, u64)>> },
    Pop { key: Option<Bytes>, reply: oneshot::Sender<Result<(Bytes, Value), Error>> },
    Items { reply: oneshot::Sender<Vec<(Bytes, Value, PeerId, u64)>> },
    Len { reply: oneshot::Sender<usize> },
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Connect { .. } => "Connect",
            Command::Broadcast { .. } => "Broadcast",
            Command::BroadcastMany { .. } => "BroadcastMany",
            Command::Whisper { .. } => "Whisper",
            Command::Reply { .. } => "Reply",
            Command::RequestPeers { .. } => "RequestPeers",
            Command::Disconnect { .. } => "Disconnect",
            Command::Peers { .. } => "Peers",
            Command::Status { .. } => "Status",
            Command::RegisterHandler { .. } => "RegisterHandler",
            Command::Shutdown { .. } => "Shutdown",
            Command::Sync(_) => "Sync",
        })
    }
}

/// What one turn of the actor's loop handles.
enum Input {
    Command(Option<Command>),
    Tick,
    Dial(Upgrade),
    Conn(ConnEvent),
    Accept(std::io::Result<(TcpStream, std::net::SocketAddr)>),
}

/// A connection's transport once its TLS handshake (if any) is done.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

/// What dial and TLS-accept tasks report.
enum Upgrade {
    Dialed { dial: DialId, result: Result<Io, String> },
    Accepted { from: std::net::SocketAddr, result: Result<Io, String> },
}

struct ConnHandle {
    tx: mpsc::Sender<WriterCmd>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        // The writer ends by itself once its queue is drained and closed.
        self.reader.abort();
    }
}

pub(crate) struct Actor {
    node: Node,
    settings: Settings,
    listener: TcpListener,
    cmd_rx: mpsc::Receiver<Command>,
    weak_cmd: mpsc::WeakSender<Command>,
    events: crate::socket::EventHub,
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
    next_conn: u64,
    conn_tx: mpsc::Sender<ConnEvent>,
    conn_rx: mpsc::Receiver<ConnEvent>,
    dial_tx: mpsc::Sender<Upgrade>,
    dial_rx: mpsc::Receiver<Upgrade>,
    /// Incoming connections in their TLS handshake (count toward the
    /// pending-handshake cap).
    tls_pending: usize,
    pending_connects: HashMap<DialId, (PeerAddr, oneshot::Sender<Result<PeerId, Error>>)>,
    handlers: Vec<Handler>,
    start: Instant,
    recent_errors: VecDeque<String>,
    dropped_messages: u64,
    slow_peers: u64,
    refused: u64,
}

impl Actor {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: mesh::Config,
        sync_cfg: Option<sync::Config>,
        seed: u64,
        listener: TcpListener,
        settings: Settings,
        cmd_rx: mpsc::Receiver<Command>,
        weak_cmd: mpsc::WeakSender<Command>,
        events: crate::socket::EventHub,
        inbox: InboxSender,
    ) -> Self {
        let (conn_tx, conn_rx) = mpsc::channel(crate::socket::INBOUND_CHANNEL_CAP);
        let (dial_tx, dial_rx) = mpsc::channel(DIAL_CHANNEL_CAP);
        Actor {
            node: {
                let me = cfg.id.clone();
                let replica = sync_cfg.map(|c| Replica::new(me, c, seed ^ 0x5157));
                Node::new(Mesh::new(cfg, seed), replica)
            },
            settings,
            listener,
            cmd_rx,
            weak_cmd,
            events,
            inbox,
            to_inbox: Vec::new(),
            inbox_room: 0,
            conns: ConnMap::default(),
            batches: ConnMap::default(),
            next_conn: 0,
            conn_tx,
            conn_rx,
            dial_tx,
            dial_rx,
            tls_pending: 0,
            pending_connects: HashMap::new(),
            handlers: Vec::new(),
            start: Instant::now(),
            recent_errors: VecDeque::new(),
            dropped_messages: 0,
            slow_peers: 0,
            refused: 0,
        }
    }

    fn now(&self) -> Now {
        Now {
            mono_ms: self.start.elapsed().as_millis() as u64,
            unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        }
    }

    pub(crate) async fn run(mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let input = tokio::select! {
                biased;
                cmd = self.cmd_rx.recv() => Input::Command(cmd),
                _ = tick.tick() => Input::Tick,
                Some(d) = self.dial_rx.recv() => Input::Dial(d),
                Some(ev) = self.conn_rx.recv() => Input::Conn(ev),
                acc = self.listener.accept() => Input::Accept(acc),
            };
            // The replica's change events cost a copy of each changed value:
            // built only while someone listens, checked now rather than
            // before the wait (a subscriber may have come meanwhile).
            let listening = self.has_listeners();
            if let Some(r) = self.node.sync.as_mut() {
                r.set_report_changes(listening);
            }
            match input {
                Input::Command(Some(Command::Shutdown { reply })) => {
                    self.shutdown().await;
                    let _ = reply.send(());
                    return;
                }
                Input::Command(Some(cmd)) => self.on_command(cmd),
                Input::Command(None) => {
                    self.shutdown().await;
                    return;
                }
                Input::Tick => {
                    let now = self.now();
                    self.node.handle_tick(now);
                }
                Input::Dial(d) => self.on_dial(d),
                Input::Conn(ev) => self.on_conn_event(ev),
                Input::Accept(acc) => self.on_accept(acc).await,
            }
            self.flush().await;
        }
    }

    /// Whether anyone subscribed to events and still listens.
    fn has_listeners(&self) -> bool {
        self.events.get().is_some_and(|e| e.receiver_count() > 0)
    }

    fn on_command(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::Connect { addr, expected, reply } => match self.node.mesh.connect(addr.clone(), expected) {
                Ok(dial) => {
                    self.pending_connects.insert(dial, (addr, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e.into()));
                }
            },
            Command::Broadcast { subflag, packets, reply } => {
                let _ = reply.send(self.node.mesh.broadcast(now, subflag, &packets).map_err(Into::into));
            }
            Command::BroadcastMany { messages, reply } => {
                // Stops at the first refused message; the earlier ones are sent.
                let ids: Result<Vec<MsgId>, _> =
                    messages.iter().map(|p| self.node.mesh.broadcast(now, subflag::BROADCAST, p)).collect();
                let _ = reply.send(ids.map_err(Into::into));
            }
            Command::Whisper { peer, packets, reply } => {
                let r = self.node.mesh.whisper(now, &peer, subflag::WHISPER, &packets);
                let _ = reply.send(r.map_err(Into::into));
            }
            Command::Reply { to, packets, reply } => {
                let _ = reply.send(self.node.mesh.reply(now, &to, &packets).map_err(Into::into));
            }
            Command::RequestPeers { reply } => {
                self.node.mesh.request_peers(now);
                let _ = reply.send(());
            }
            Command::Disconnect { peer, reply } => {
                let _ = reply.send(self.node.mesh.disconnect(&peer).map_err(Into::into));
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.node.mesh.peers());
            }
            Command::Status { reply } => {
                let _ = reply.send(Status {
                    nominal: self.recent_errors.is_empty(),
                    recent_errors: self.recent_errors.iter().cloned().collect(),
                    stats: self.node.mesh.stats(),
                    peers: self.node.mesh.peers().len(),
                    connections: self.node.mesh.connection_count(),
                    dropped_messages: self.dropped_messages,
                    slow_peers: self.slow_peers,
                    refused_connections: self.refused,
                });
            }
            Command::RegisterHandler { handler, reply } => {
                self.handlers.push(handler);
                let _ = reply.send(());
            }
            Command::Shutdown { .. } => unreachable!("handled in run"),
            Command::Sync(cmd) => self.on_sync(now, cmd),
        }
    }

    fn on_sync(&mut self, now: Now, cmd: SyncCommand) {
        fn write_err(e: WriteError) -> Error {
            match e {
                WriteError::Leased { owner, until } => Error::Leased { owner, until },
                WriteError::NotFound => Error::KeyNotFound,
                WriteError::NotAMap => Error::NotAMap,
                WriteError::TooLarge { len, max } => Error::MessageTooLarge { len, max },
            }
        }
        let Some(replica) = self.node.sync.as_ref() else {
            // Every reply channel below is dropped: callers see Error::Closed,
            // but SyncSocket is only ever built with a replica.
            return;
        };
        match cmd {
            SyncCommand::Set { pairs, reply } => {
                // py2p's update() stops at the first refused key; earlier
                // keys stay written.
                let mut result = Ok(());
                for (key, value) in pairs {
                    if let Err(e) = self.node.with_replica(now, |r, now| r.set(now, key, value)) {
                        result = Err(write_err(e));
                        break;
                    }
                }
                let _ = reply.send(result);
            }
            SyncCommand::Delete { key, reply } => {
                let _ = reply.send(self.node.with_replica(now, |r, now| r.delete(now, key)).map_err(write_err));
            }
            SyncCommand::Delta { key, delta, reply } => {
                let r = self.node.with_replica(now, |r, now| r.apply_delta(now, key, delta));
                let _ = reply.send(r.map_err(write_err));
            }
            SyncCommand::Get { key, reply } => {
                let v = replica.get(&key).and_then(|v| replica.meta(&key).map(|(o, t)| (v, o, t)));
                let _ = reply.send(v);
            }
            SyncCommand::Pop { key, reply } => {
                let key = key.or_else(|| replica.items().next().map(|(k, _, _)| k.clone()));
                let result = match key.and_then(|k: Bytes| replica.get(&k).map(|v| (k, v))) {
                    None => Err(Error::KeyNotFound),
                    Some((k, v)) => self
                        .node
                        .with_replica(now, |r, now| r.delete(now, k.clone()))
                        .map(|()| (k, v))
                        .map_err(write_err),
                };
                let _ = reply.send(result);
            }
            SyncCommand::Items { reply } => {
                let items = replica.items().map(|(k, v, ver)| (k.clone(), v, ver.owner.clone(), ver.secs())).collect();
                let _ = reply.send(items);
            }
            SyncCommand::Len { reply } => {
                let _ = reply.send(replica.len());
            }
        }
    }

    fn on_dial(&mut self, u: Upgrade) {
        let now = self.now();
        match u {
            Upgrade::Dialed { dial, result: Ok(io) } => {
                if self.conns.len() >= self.settings.max_connections {
                    self.node.handle_dial_failed(now, dial, "connection limit reached".into());
                    return;
                }
                let conn = self.open(io);
                self.node.handle_dialed(now, dial, conn);
            }
            Upgrade::Dialed { dial, result: Err(e) } => self.node.handle_dial_failed(now, dial, e),
            Upgrade::Accepted { from, result } => {
                self.tls_pending -= 1;
                match result {
                    Ok(io) => {
                        let conn = self.open(io);
                        self.node.handle_incoming(now, conn);
                    }
                    Err(e) => {
                        tracing::info!(%from, "incoming connection failed: {e}");
                        self.note_error(format!("incoming from {from}: {e}"));
                        self.emit(Event::ConnectFailed { addr: None, reason: e });
                    }
                }
            }
        }
    }

    fn on_conn_event(&mut self, ev: ConnEvent) {
        let now = self.now();
        match ev {
            ConnEvent::Packets(conn, batch) => {
                for p in batch {
                    self.node.handle_packet(now, conn, p);
                }
            }
            ConnEvent::Closed(conn, reason) => {
                if self.conns.remove(&conn).is_some() {
                    if matches!(reason, CloseReason::Decode(_) | CloseReason::Stalled) {
                        self.note_error(format!("connection {}: {reason}", conn.0));
                    }
                    self.node.handle_closed(now, conn, reason);
                }
            }
        }
    }

    async fn on_accept(&mut self, acc: std::io::Result<(TcpStream, std::net::SocketAddr)>) {
        match acc {
            Ok((stream, from)) => {
                if self.conns.len() >= self.settings.max_connections {
                    tracing::warn!(%from, "refusing connection: limit of {} connections reached", self.settings.max_connections);
                    self.refused += 1;
                    return;
                }
                if self.node.mesh.handshaking_count() + self.tls_pending >= self.settings.max_pending {
                    tracing::warn!(%from, "refusing connection: {} connections still handshaking", self.settings.max_pending);
                    self.refused += 1;
                    return;
                }
                let _ = stream.set_nodelay(true);
                match self.settings.tls.clone() {
                    None => {
                        let conn = self.open(Io::Plain(stream));
                        let now = self.now();
                        self.node.handle_incoming(now, conn);
                    }
                    Some(tls) => {
                        // The TLS handshake runs in its own task, under the
                        // handshake deadline, and counts as pending.
                        self.tls_pending += 1;
                        let tx = self.dial_tx.clone();
                        let deadline = self.settings.handshake_timeout;
                        tokio::spawn(async move {
                            let result = match tokio::time::timeout(deadline, tls.acceptor.accept(stream)).await {
                                Ok(Ok(s)) => Ok(Io::Tls(Box::new(tokio_rustls::TlsStream::Server(s)))),
                                Ok(Err(e)) => Err(crate::tls::explain(&e)),
                                Err(_) => Err(format!("TLS handshake not done within {deadline:?}")),
                            };
                            let _ = tx.send(Upgrade::Accepted { from, result }).await;
                        });
                    }
                }
            }
            Err(e) => {
                // Typically out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

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
        }
    }

    fn open_split<R, W>(&mut self, rd: R, wr: W) -> ConnId
    where
        R: crate::conn::ReadHalf,
        W: tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        // The queue holds batches of at most MAX_BATCH_FRAMES frames or
        // MAX_BATCH_BYTES bytes (a larger frame travels alone): about
        // `send_queue_cap` small frames, fewer large ones.
        let (tx, rx) = mpsc::channel((self.settings.send_queue_cap / MAX_BATCH_FRAMES).max(4));
        let reader = tokio::spawn(read_loop(
            conn,
            rd,
            self.settings.limits,
            self.settings.compression.clone(),
            self.settings.stall_timeout,
            self.conn_tx.clone(),
        ));
        let writer = tokio::spawn(write_loop(conn, wr, rx, self.conn_tx.clone()));
        self.conns.insert(conn, ConnHandle { tx, reader, writer });
        conn
    }

    fn spawn_dial(&self, dial: DialId, addr: PeerAddr) {
        let tx = self.dial_tx.clone();
        let timeout = self.settings.dial_timeout;
        let tls = self.settings.tls.clone();
        tokio::spawn(async move {
            let target = (addr.host.clone(), addr.port);
            let result = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
                Ok(Ok(s)) => match tls {
                    None => Ok(Io::Plain(s)),
                    Some(tls) => {
                        let _ = s.set_nodelay(true);
                        let name = crate::tls::Tls::server_name(&addr.host);
                        match tokio::time::timeout(timeout, tls.connector.connect(name, s)).await {
                            Ok(Ok(s)) => Ok(Io::Tls(Box::new(tokio_rustls::TlsStream::Client(s)))),
                            Ok(Err(e)) => Err(crate::tls::explain(&e)),
                            Err(_) => Err(format!("TLS handshake not done within {timeout:?}")),
                        }
                    }
                },
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {timeout:?}")),
            };
            let _ = tx.send(Upgrade::Dialed { dial, result }).await;
        });
    }

    async fn flush(&mut self) {
        // Frames are gathered per connection and handed to each writer as
        // one batch per step (one channel operation instead of one per
        // frame); a batch that reaches the frame or byte bound goes at once,
        // which keeps the batch-bounded send queues bounded in bytes.
        let mut batches = std::mem::take(&mut self.batches);
        self.inbox_room = self.inbox.0.room();
        while let Some(o) = self.node.poll_output() {
            let o = match o {
                node::Output::Mesh(o) => o,
                node::Output::Sync(e) => {
                    self.emit(match e {
                        sync::Event::Update { key, value, owner, timestamp } => {
                            Event::Update { key, value, owner, timestamp }
                        }
                        sync::Event::Delete { key } => Event::Delete { key },
                    });
                    continue;
                }
            };
            match o {
                Output::Send { conn, frame } => {
                    let (frames, bytes) = batches.entry(conn).or_default();
                    *bytes += frame.wire_bytes().len();
                    frames.push(frame);
                    if frames.len() >= MAX_BATCH_FRAMES || *bytes >= MAX_BATCH_BYTES {
                        let full = std::mem::take(frames);
                        *bytes = 0;
                        self.queue_for_writer(conn, WriterCmd::Frames(full)).await;
                    }
                }
                Output::Configure { conn, codec } => {
                    // Frames queued before the codec change go first.
                    if let Some((b, _)) = batches.remove(&conn) {
                        self.queue_for_writer(conn, WriterCmd::Frames(b)).await;
                    }
                    self.queue_for_writer(conn, WriterCmd::Codec(codec)).await;
                }
                Output::Dial { dial, addr } => self.spawn_dial(dial, addr),
                Output::Close { conn, reason } => {
                    if let Some((b, _)) = batches.remove(&conn) {
                        self.queue_for_writer(conn, WriterCmd::Frames(b)).await;
                    }
                    if matches!(reason, CloseReason::ProtocolViolation(_)) {
                        self.note_error(format!("connection {}: {reason}", conn.0));
                    }
                    self.close(conn);
                }
                Output::Event(e) => self.on_event(e),
            }
        }
        for (conn, (b, _)) in batches.drain() {
            if b.is_empty() {
                continue;
            }
            self.queue_for_writer(conn, WriterCmd::Frames(b)).await;
        }
        self.batches = batches;
        // One lock and one wake-up for the whole step.
        self.dropped_messages += self.inbox.0.push(&mut self.to_inbox) as u64;
    }

    /// Queues a command for a connection's writer. A full queue is waited
    /// for (backpressure: the node stops reading meanwhile) up to the slow
    /// peer timeout, after which the peer is disconnected.
    async fn queue_for_writer(&mut self, conn: ConnId, cmd: WriterCmd) {
        let Some(h) = self.conns.get(&conn) else {
            return;
        };
        match h.tx.try_send(cmd) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(cmd)) => {
                // Messages gathered so far need not wait for a slow peer.
                self.dropped_messages += self.inbox.0.push(&mut self.to_inbox) as u64;
                let tx = h.tx.clone();
                if tx.send_timeout(cmd, self.settings.slow_peer_timeout).await.is_err() {
                    self.slow_peers += 1;
                    tracing::warn!(conn = conn.0, "disconnecting slow peer");
                    self.close(conn);
                    let now = self.now();
                    self.node.handle_closed(now, conn, CloseReason::SlowPeer);
                }
            }
        }
    }

    fn close(&mut self, conn: ConnId) {
        if let Some(h) = self.conns.remove(&conn) {
            // Queued frames are still written; then the socket closes.
            let _ = h.tx.try_send(WriterCmd::Close);
        }
    }

    /// Publishes an event, if anyone ever subscribed.
    fn emit(&self, e: Event) {
        if let Some(tx) = self.events.get() {
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
            mesh::Event::PeerUp { peer, addr, outgoing, dial, first, .. } => {
                if first {
                    self.emit(Event::Connected { peer: peer.clone() });
                }
                if let Some((_, reply)) = dial.and_then(|d| self.pending_connects.remove(&d)) {
                    let _ = reply.send(Ok(peer.clone()));
                }
                self.emit(Event::PeerUp { peer, addr, outgoing });
            }
            mesh::Event::PeerDown { peer, reason, .. } => {
                self.emit(Event::PeerDown { peer, reason: reason.to_string() });
            }
            mesh::Event::ConnectFailed { dial, addr, reason, peer, .. } => {
                if let Some((target, reply)) = dial.and_then(|d| self.pending_connects.remove(&d)) {
                    let r = match (&reason, peer) {
                        // Lost the conflict rule: connected through the other link.
                        (CloseReason::Duplicate, Some(p)) => Ok(p),
                        _ => Err(Error::Connect { addr: target, reason: reason.to_string() }),
                    };
                    let _ = reply.send(r);
                }
                if !matches!(reason, CloseReason::Duplicate) {
                    self.emit(Event::ConnectFailed { addr, reason: reason.to_string() });
                }
            }
            mesh::Event::Message(d) => self.on_message(Message::new(d.packet, &self.weak_cmd)),
        }
    }

    fn on_message(&mut self, msg: Message) {
        for h in &self.handlers {
            match std::panic::catch_unwind(AssertUnwindSafe(|| h(&msg))) {
                Ok(true) => return,
                Ok(false) => {}
                Err(_) => tracing::error!("a message handler panicked; continuing with the next"),
            }
        }
        if !matches!(msg.subflag(), subflag::BROADCAST | subflag::WHISPER) {
            tracing::debug!(subflag = msg.subflag(), "ignoring message with unknown sub-flag");
            return;
        }
        if self.inbox_room == 0 {
            self.dropped_messages += 1;
            return;
        }
        self.inbox_room -= 1;
        if self.has_listeners() {
            self.emit(Event::Message(msg.clone()));
        }
        self.to_inbox.push(msg);
    }

    async fn shutdown(&mut self) {
        self.node.mesh.shutdown();
        self.flush().await;
        let handles: Vec<ConnHandle> = self.conns.drain().map(|(_, h)| h).collect();
        let mut writers = Vec::new();
        for mut h in handles {
            let _ = h.tx.try_send(WriterCmd::Close);
            writers.push(std::mem::replace(&mut h.writer, tokio::spawn(async {})));
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            for w in writers {
                let _ = w.await;
            }
        })
        .await;
        self.pending_connects.clear();
    }
}
