//! The public handle: [`MeshSocket`].

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use rs2p_proto::id::{MsgId, PeerId, Protocol};
use rs2p_proto::mesh::{self, PeerAddr, PeerInfo, ReplyRoute};
use rs2p_proto::node;
use rs2p_proto::wire::{Frame, SubFlag};
use rs2p_proto::Value;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::actor::Actor;
use crate::command::{Command, Query, Responder};
use crate::config::{NodeConfig, COMMAND_CHANNEL_CAP, EVENT_CHANNEL_CAP};
use crate::event::{EventHub, EventStream};
use crate::inbox::InboxSender;
use crate::transport::Stream;
use crate::{Builder, Error, Message, Status};

#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug)]
struct Inner {
    cmd: mpsc::Sender<Command>,
    events: EventHub,
    inbox: Arc<crate::inbox::Inbox>,
    id: PeerId,
    public_key: [u8; 32],
    protocol: Protocol,
    tls_fingerprint: Option<[u8; 32]>,
    local_addr: SocketAddr,
    out_addr: PeerAddr,
    #[allow(dead_code)] // held for its Drop
    task: AbortOnDrop,
}

/// The answer to a command submitted without waiting
/// ([`MeshSocket::publish_blocking`]).
#[derive(Debug)]
pub struct Pending<T>(oneshot::Receiver<Result<T, Error>>);

impl<T> Pending<T> {
    /// Waits for the answer.
    ///
    /// # Errors
    /// The command's error, or [`Error::Closed`] if the node stopped first.
    pub async fn wait(self) -> Result<T, Error> {
        self.0.await?
    }

    /// The answer if it has come.
    pub fn try_take(&mut self) -> Option<Result<T, Error>> {
        match self.0.try_recv() {
            Ok(r) => Some(r),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(Error::Closed)),
        }
    }

    /// Waits for the answer from a thread outside the async runtime.
    ///
    /// # Errors
    /// As [`Pending::wait`].
    ///
    /// # Panics
    /// If called from within an async runtime.
    pub fn blocking_wait(self) -> Result<T, Error> {
        self.0.blocking_recv()?
    }
}

/// A node of a py2p-compatible mesh network (py2p's `MeshSocket`).
///
/// A cheap, cloneable handle to a node running in the background: one
/// actor task owns the protocol state, each connection has a reader and a
/// writer task. Dropping the last handle stops the node.
///
/// ```no_run
/// # async fn demo() -> Result<(), rs2p::Error> {
/// use rs2p::{MeshSocket, Value};
/// let a = MeshSocket::builder().spawn().await?;
/// let b = MeshSocket::builder().spawn().await?;
/// b.connect(a.out_addr().clone()).await?;
/// a.broadcast(vec![Value::from("hello")]).await?;
/// let msg = b.next_message().await.expect("a message");
/// assert_eq!(msg.packets()?, vec![Value::from("hello")]);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MeshSocket {
    inner: Arc<Inner>,
}

impl MeshSocket {
    /// A builder with default settings.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Starts the actor on `listener` (from [`Builder::spawn`]).
    pub(crate) fn start(
        cfg: NodeConfig,
        listener: TcpListener,
        local_addr: SocketAddr,
        store: Option<crate::store::Init>,
    ) -> MeshSocket {
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CHANNEL_CAP);
        let events: EventHub = Default::default();
        let inbox = crate::inbox::Inbox::new(cfg.driver.recv_queue_cap);
        let id = cfg.mesh.id.clone();
        let public_key = cfg.identity.public_key();
        let protocol = cfg.mesh.protocol.clone();
        let out_addr = cfg.mesh.out_addr.clone();
        let tls_fingerprint = cfg.driver.tls.as_ref().map(|t| t.fingerprint);
        let actor =
            Actor::new(cfg, listener, cmd_rx, cmd_tx.downgrade(), events.clone(), InboxSender(inbox.clone()), store);
        let task = tokio::spawn(actor.run());
        MeshSocket {
            inner: Arc::new(Inner {
                cmd: cmd_tx,
                events,
                inbox,
                id,
                public_key,
                protocol,
                tls_fingerprint,
                local_addr,
                out_addr,
                task: AbortOnDrop(task),
            }),
        }
    }

    /// This node's id.
    pub fn id(&self) -> &PeerId {
        &self.inner.id
    }

    /// This node's Ed25519 public key: [`MeshSocket::id`] is base58 of
    /// its SHA-384 ([`crate::proto::identity::id_of_key`]).
    pub fn public_key(&self) -> [u8; 32] {
        self.inner.public_key
    }

    /// The network's protocol.
    pub fn protocol(&self) -> &Protocol {
        &self.inner.protocol
    }

    /// The sha256 fingerprint of this node's TLS certificate (for peers to
    /// pin), if TLS is on.
    pub fn tls_fingerprint(&self) -> Option<[u8; 32]> {
        self.inner.tls_fingerprint
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The address other nodes are told to dial.
    pub fn out_addr(&self) -> &PeerAddr {
        &self.inner.out_addr
    }

    async fn send(&self, command: Command) -> Result<(), Error> {
        Ok(self.inner.cmd.send(command).await?)
    }

    /// Runs a state-machine command and awaits its answer.
    pub(crate) async fn run<T>(
        &self,
        command: impl Into<node::Command>,
        responder: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Responder,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Node { command: command.into(), reply: responder(tx) }).await?;
        rx.await?
    }

    /// Asks a query and awaits its answer.
    pub(crate) async fn query<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Query) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Query(make(tx))).await?;
        Ok(rx.await?)
    }

    /// Connects to the node at `addr` and resolves once its handshake is
    /// done, with its id. py2p's `connect(addr, port)`; peer exchange then
    /// connects this node to the rest of the network.
    ///
    /// # Errors
    /// [`Error::Connect`] with the reason (refused, timeout, foreign subnet:
    /// py2p fails silently there), [`Error::OwnAddress`], [`Error::Closed`].
    ///
    /// # Cancel safety
    /// Cancelling stops the wait, not the connection attempt.
    pub async fn connect(&self, addr: PeerAddr) -> Result<PeerId, Error> {
        self.connect_with_hint(addr, None).await
    }

    /// [`MeshSocket::connect`] with py2p's `id` argument: the id thought to
    /// be at `addr`, a hint (py2p skips the dial if that id is already
    /// connected), not checked. To insist on an id, use
    /// [`MeshSocket::connect_expecting`].
    ///
    /// # Errors
    /// As [`MeshSocket::connect`].
    pub async fn connect_with_hint(&self, addr: PeerAddr, expected: Option<PeerId>) -> Result<PeerId, Error> {
        self.run(mesh::Command::Connect { addr, expected }, Responder::Connected).await
    }

    /// Connects to `addr` only if the node there is `id` and proves it: it
    /// must sign a challenge with the key behind `id` (so it is an rs2p
    /// node with a key; a py2p node cannot prove an id).
    ///
    /// # Errors
    /// [`Error::Connect`] with [`CloseReason::Auth`](crate::CloseReason::Auth)
    /// naming what failed: another id there, no proof offered, or a failed
    /// proof (an impostor); otherwise as [`MeshSocket::connect`].
    pub async fn connect_expecting(&self, addr: PeerAddr, id: PeerId) -> Result<PeerId, Error> {
        self.run(mesh::Command::ConnectProven { addr, id }, Responder::Connected).await
    }

    /// Adopts an already connected byte stream (a Unix socket, an in-memory
    /// pipe, a connection from another transport) as an incoming
    /// connection: the node handshakes on it and treats it as any peer.
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn attach<S>(&self, stream: S) -> Result<(), Error>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Attach { stream: Box::new(stream) as Box<dyn Stream>, reply: tx }).await?;
        Ok(rx.await?)
    }

    /// Floods `packets` to every node of the network (py2p's `send`).
    /// Returns the message id.
    ///
    /// # Errors
    /// [`Error::MessageTooLarge`] above the frame limit, [`Error::Closed`] if
    /// the node has stopped.
    pub async fn broadcast(&self, packets: Vec<Value>) -> Result<MsgId, Error> {
        self.send_flagged(SubFlag::Broadcast.code(), packets).await
    }

    /// Floods several messages with one round trip to the node (each is
    /// still its own message, with its own id). For producers with many
    /// messages at once.
    ///
    /// # Errors
    /// [`Error::MessageTooLarge`] for the first message above the frame
    /// limit (the ones before it are sent), [`Error::Closed`].
    pub async fn broadcast_many(&self, messages: Vec<Vec<Value>>) -> Result<Vec<MsgId>, Error> {
        self.run(mesh::Command::BroadcastMany { messages }, Responder::SentMany).await
    }

    /// Floods a message with a custom sub-flag (for protocols layered on the
    /// mesh). Sub-flags below `0x30` are reserved for the protocol.
    ///
    /// # Errors
    /// [`Error::MessageTooLarge`], [`Error::Closed`].
    pub async fn send_flagged(&self, subflag: u64, packets: Vec<Value>) -> Result<MsgId, Error> {
        self.run(mesh::Command::Broadcast { subflag, packets }, Responder::Sent).await
    }

    /// Floods a broadcast frame built by the caller (with
    /// [`rs2p_proto::wire::Frame::build`], this node's id as sender): the
    /// encoding and the size check happen on the caller's thread.
    ///
    /// # Errors
    /// [`Error::BadFrame`] if it is not a broadcast from this node,
    /// [`Error::MessageTooLarge`], [`Error::Closed`].
    pub async fn publish(&self, frame: Frame) -> Result<MsgId, Error> {
        self.run(mesh::Command::Publish { frame }, Responder::Sent).await
    }

    /// [`MeshSocket::publish`] from a thread outside the async runtime (a
    /// binding's caller thread): the frame is queued in order at once,
    /// blocking only while the node's command queue is full, and the answer
    /// is collected later from the returned [`Pending`]. Keeping a bounded
    /// window of them pipelines sends while a slow network still slows the
    /// sender down.
    ///
    /// # Errors
    /// [`Error::Closed`].
    ///
    /// # Panics
    /// If called from within an async runtime (use
    /// [`MeshSocket::publish`] there).
    pub fn publish_blocking(&self, frame: Frame) -> Result<Pending<MsgId>, Error> {
        let (tx, rx) = oneshot::channel();
        let command = Command::Node { command: mesh::Command::Publish { frame }.into(), reply: Responder::Sent(tx) };
        self.inner.cmd.blocking_send(command).map_err(|_| Error::Closed)?;
        Ok(Pending(rx))
    }

    /// Whispers `packets` with a custom sub-flag to a directly connected
    /// peer (py2p's `connection.send(whisper, subflag, ...)`).
    ///
    /// # Errors
    /// [`Error::NotConnected`], [`Error::MessageTooLarge`], [`Error::Closed`].
    pub async fn whisper_flagged(&self, peer: &PeerId, subflag: u64, packets: Vec<Value>) -> Result<MsgId, Error> {
        self.run(mesh::Command::Whisper { peer: peer.clone(), subflag, packets }, Responder::Sent).await
    }

    /// Sends `packets` to a directly connected peer only.
    ///
    /// # Errors
    /// [`Error::NotConnected`] if `peer` is not directly connected.
    pub async fn whisper(&self, peer: &PeerId, packets: Vec<Value>) -> Result<MsgId, Error> {
        self.run(
            mesh::Command::Whisper { peer: peer.clone(), subflag: SubFlag::Whisper.code(), packets },
            Responder::Sent,
        )
        .await
    }

    /// Whispers `packets` to `peer`, routing through the network when not
    /// directly connected (what [`Message::reply`] uses).
    ///
    /// # Errors
    /// [`Error::TooManyPending`], [`Error::Closed`].
    pub async fn send_to(&self, peer: &PeerId, packets: Vec<Value>) -> Result<ReplyRoute, Error> {
        self.run(mesh::Command::Reply { to: peer.clone(), packets }, Responder::Routed).await
    }

    /// Asks every peer for its peer list (py2p's `request_peers`).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn request_peers(&self) -> Result<(), Error> {
        self.run(mesh::Command::RequestPeers, Responder::Done).await
    }

    /// Closes the connection to `peer` (py2p's `disconnect`).
    ///
    /// # Errors
    /// [`Error::NotConnected`], [`Error::Closed`].
    pub async fn disconnect(&self, peer: &PeerId) -> Result<(), Error> {
        self.run(mesh::Command::Disconnect { peer: peer.clone() }, Responder::Done).await
    }

    /// The routing table: every connected peer (py2p's `routing_table`).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn routing_table(&self) -> Result<Vec<PeerInfo>, Error> {
        self.query(Query::Peers).await
    }

    /// Ids of the peers we dialed (py2p's `outgoing`).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn outgoing(&self) -> Result<Vec<PeerId>, Error> {
        Ok(self.routing_table().await?.into_iter().filter(|p| p.outgoing).map(|p| p.id).collect())
    }

    /// Ids of the peers that dialed us (py2p's `incoming`).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn incoming(&self) -> Result<Vec<PeerId>, Error> {
        Ok(self.routing_table().await?.into_iter().filter(|p| !p.outgoing).map(|p| p.id).collect())
    }

    /// Health and counters (py2p's `status`).
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn status(&self) -> Result<Status, Error> {
        self.query(Query::Status).await
    }

    /// Adds a handler to the chain run on every incoming user message
    /// (py2p's `register_handler`). Handlers run in registration order on the
    /// node's actor task; the first that returns `true` stops the chain and
    /// the message is not queued for [`MeshSocket::recv`]. Keep them short:
    /// the node waits for them. (A program whose handlers may block should
    /// take messages from [`MeshSocket::next_message`] on a task of its own,
    /// as the Python package does.)
    ///
    /// # Errors
    /// [`Error::Closed`].
    pub async fn register_handler<F>(&self, handler: F) -> Result<(), Error>
    where
        F: Fn(&Message) -> bool + Send + Sync + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.send(Command::RegisterHandler { handler: Arc::new(handler), reply: tx }).await?;
        Ok(rx.await?)
    }

    /// Takes up to `quantity` queued messages without waiting (py2p's
    /// `recv(quantity)`); empty when none is queued.
    pub fn recv(&self, quantity: usize) -> Vec<Message> {
        self.inner.inbox.take(quantity)
    }

    /// Waits for the next queued message; `None` once the node has stopped
    /// and every queued message was taken.
    ///
    /// # Cancel safety
    /// Cancel safe: a message is only taken when this returns it.
    pub async fn next_message(&self) -> Option<Message> {
        self.inner.inbox.next().await
    }

    /// A stream of [`crate::Event`]s from now on.
    pub fn events(&self) -> EventStream {
        EventStream(self.inner.events.all.get_or_init(|| broadcast::channel(EVENT_CHANNEL_CAP).0).subscribe())
    }

    /// A stream of every [`crate::Event`] but [`crate::Event::Message`],
    /// from now on: for applications that take their messages from
    /// [`MeshSocket::recv`] or [`MeshSocket::next_message`], so that each
    /// message is not also copied into an event stream (and a burst of
    /// messages cannot make the stream lag and lose peer events).
    pub fn peer_events(&self) -> EventStream {
        EventStream(
            self.inner.events.without_messages.get_or_init(|| broadcast::channel(EVENT_CHANNEL_CAP).0).subscribe(),
        )
    }

    /// Closes every connection and stops the node (py2p's `close`). Other
    /// handles then get [`Error::Closed`].
    ///
    /// # Errors
    /// [`Error::Closed`] if it was already stopped.
    pub async fn close(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Shutdown { reply: tx }).await?;
        Ok(rx.await?)
    }

    // ----- for the sync handle ----------------------------------------------

    /// A key's value with its owner and timestamp, from the replica.
    pub(crate) async fn sync_get(&self, key: Bytes) -> Result<Option<(Value, PeerId, u64)>, Error> {
        self.query(|reply| Query::Get { key, reply }).await
    }
}
