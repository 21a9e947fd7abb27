//! [`Message`]: a message received from the network (py2p's `Message`).

use rs2p_proto::id::{MsgId, PeerId};
use rs2p_proto::mesh::{self, ReplyRoute};
use rs2p_proto::wire::{DecodeError, MsgType, Packet};
use rs2p_proto::Value;
use tokio::sync::{mpsc, oneshot};

use crate::command::{Command, Responder};
use crate::Error;

/// A user message handler: return `true` to stop the chain (the message is
/// then not queued for [`crate::MeshSocket::recv`]).
pub type Handler = std::sync::Arc<dyn Fn(&Message) -> bool + Send + Sync>;

/// Whether a message was flooded or whispered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// Flooded to the network.
    Broadcast,
    /// Sent to this node only.
    Whisper,
}

impl MessageKind {
    /// `"broadcast"` or `"whisper"`.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Broadcast => "broadcast",
            MessageKind::Whisper => "whisper",
        }
    }
}

/// A message received from the network (py2p's `Message`).
///
/// Its packets are decoded on demand, so a node that only relays never pays
/// for decoding.
#[derive(Clone)]
pub struct Message {
    packet: Packet,
    /// The direct peer it arrived from (the sender, or the last relay).
    via: Option<PeerId>,
    /// Whether it is proven to be its sender's.
    verified: bool,
    /// The node it arrived at, for [`Message::reply`] (weak: a message kept
    /// by the application does not keep its node alive).
    node: mpsc::WeakSender<Command>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("sender", &self.sender())
            .field("time", &self.time())
            .field("subflag", &self.subflag())
            .finish()
    }
}

impl Message {
    pub(crate) fn new(packet: Packet, via: Option<PeerId>, verified: bool, node: &mpsc::WeakSender<Command>) -> Self {
        Message { packet, via, verified, node: node.clone() }
    }

    /// Whether the message is proven to come from [`Message::sender`]: a
    /// broadcast covered by its sender's signature (rs2p nodes sign what
    /// they originate), or a whisper on the link its sender proved its id
    /// on. `false` for a py2p node's messages, and for an rs2p node's
    /// broadcast that crossed a py2p relay (py2p is never sent signatures)
    /// from a sender this node had not yet seen signing. A message that claims a sender known to sign,
    /// without its signature, is never delivered at all.
    pub fn verified(&self) -> bool {
        self.verified
    }

    /// The directly connected peer this message arrived from: its sender, or
    /// the last node that relayed it (py2p hands handlers this connection).
    pub fn via(&self) -> Option<&PeerId> {
        self.via.as_ref()
    }

    /// Broadcast or whisper (by message type).
    pub fn kind(&self) -> MessageKind {
        if self.packet.header.msg_type == MsgType::Broadcast.code() {
            MessageKind::Broadcast
        } else {
            MessageKind::Whisper
        }
    }

    /// The original sender's id.
    pub fn sender(&self) -> &PeerId {
        &self.packet.header.sender
    }

    /// The sender's UNIX time in seconds.
    pub fn time(&self) -> u64 {
        self.packet.header.time
    }

    /// The message id (sha256 of the payload).
    pub fn id(&self) -> MsgId {
        self.packet.frame.id()
    }

    /// The sub-flag (0 for broadcasts, 2 for whispers, others for protocols
    /// layered on the mesh).
    pub fn subflag(&self) -> u64 {
        self.packet.header.subflag
    }

    /// The user's packets (after the sub-flag), decoded.
    ///
    /// # Errors
    /// Only on an internal bug: payloads are validated on arrival.
    pub fn packets(&self) -> Result<Vec<Value>, DecodeError> {
        self.packet.values()
    }

    /// The checked packet, with the original frame bytes.
    pub fn raw(&self) -> &Packet {
        &self.packet
    }

    /// Whispers `packets` back to the sender, through the network if we are
    /// not directly connected (py2p's `Message.reply`, which works here in
    /// that case too).
    ///
    /// # Errors
    /// [`Error::Closed`] if the node has stopped, [`Error::TooManyPending`].
    pub async fn reply(&self, packets: Vec<Value>) -> Result<ReplyRoute, Error> {
        let node = self.node.upgrade().ok_or(Error::Closed)?;
        let (tx, rx) = oneshot::channel();
        let command = mesh::Command::Reply { to: self.sender().clone(), packets }.into();
        node.send(Command::Node { command, reply: Responder::Routed(tx) }).await?;
        rx.await?
    }
}
