//! Dissemination: which broadcasts are new, and which links each one goes
//! out on. The mesh (membership, handshakes, routing) asks; a strategy
//! answers.
//!
//! [`Flood`] is py2p's strategy ("waterfall"): every new broadcast goes to
//! every link but the one it came on (and its sender's own), and a
//! deduplication cache of message ids, bounded in time and in count,
//! suppresses copies. [`Tree`] (the default) is an epidemic broadcast tree
//! between rs2p peers that negotiated it, flooding toward the others.

mod flood;
mod seen;
mod tree;

pub use flood::Flood;
pub use seen::{MixHasher, SeenCache};
pub use tree::{Tree, TreeConfig, TreeStats};

use super::ConnId;
use crate::id::{MsgId, PeerId};
use crate::wire::Frame;
use crate::Now;

/// What a strategy makes of a broadcast that arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First copy: deliver it (where it goes next was written out).
    Fresh,
    /// A copy of a broadcast already seen: drop it.
    Duplicate,
}

/// The tree's own messages (see [`Tree`]); each is about the trees of
/// the origins it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeControl {
    /// "I have these" (per origin): ids announced instead of pushed.
    IHave(Vec<(PeerId, Vec<MsgId>)>),
    /// "Push these origins' broadcasts to me from now on, and send me
    /// these."
    Graft(Vec<(PeerId, Vec<MsgId>)>),
    /// "Stop pushing these origins' broadcasts to me."
    Prune(Vec<PeerId>),
    /// "Send me these", the tree unchanged (a hole in a stream that still
    /// flows).
    Want(Vec<(PeerId, Vec<MsgId>)>),
}

/// What a strategy asks the mesh to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Push {
    /// A broadcast frame, whole, to a link.
    Payload(ConnId, Frame),
    /// A control message to a link (it must not wait behind payload).
    Control(ConnId, TreeControl),
    /// A broadcast frame sent in answer to a graft: a repair, which goes
    /// ahead of payload like control (the asker is missing it now).
    Repair(ConnId, Frame),
}

/// A broadcast strategy: the seam between membership and relaying.
///
/// The mesh tells it which links exist ([`Dissemination::link_up`],
/// [`Dissemination::link_down`]) and asks it, for every broadcast, where
/// the frame goes; the strategy may also send messages of its own
/// ([`Push::Control`]) and receive them ([`Dissemination::on_control`]).
/// It never sees sockets or clocks other than `now`.
pub trait Dissemination: std::fmt::Debug + Send {
    /// A handshaken link; `tree` tells whether both ends speak the tree.
    fn link_up(&mut self, conn: ConnId, tree: bool);
    /// A link went away.
    fn link_down(&mut self, conn: ConnId);
    /// We (`sender`) originate the broadcast `frame`.
    fn publish(&mut self, now: Now, sender: &PeerId, frame: &Frame, out: &mut Vec<Push>);
    /// Remembers `id` as seen without sending it anywhere (a message sent on
    /// one link only, whose flood must not come back through us).
    fn mark_seen(&mut self, now: Now, id: &MsgId);
    /// Whether the broadcast `id` was seen (no side effect).
    fn has_seen(&self, id: &MsgId) -> bool;
    /// The broadcast `frame` of `sender` arrived on `from`; `origin_link`
    /// is the link to `sender`, if direct.
    fn receive(
        &mut self,
        now: Now,
        from: ConnId,
        origin_link: Option<ConnId>,
        sender: &PeerId,
        frame: &Frame,
        out: &mut Vec<Push>,
    ) -> Verdict;
    /// A control message of the strategy arrived on `from`.
    fn on_control(&mut self, now: Now, from: ConnId, control: TreeControl, out: &mut Vec<Push>);
    /// The end of one input: send what was batched and is due.
    fn flush(&mut self, now: Now, out: &mut Vec<Push>);
    /// When the strategy next needs [`Dissemination::handle_timeout`]
    /// (monotonic ms), if ever.
    fn poll_timeout(&self) -> Option<u64>;
    /// Periodic work that is due at `now` (cache expiry, grafts, ...).
    fn handle_timeout(&mut self, now: Now, out: &mut Vec<Push>);
    /// The tree's counters, for a strategy that is a tree.
    fn tree_stats(&self) -> Option<TreeStats> {
        None
    }
}
