//! Dissemination: which broadcasts are new, and which links each one goes
//! out on. The mesh (membership, handshakes, routing) asks; a strategy
//! answers.
//!
//! [`Flood`] is py2p's strategy ("waterfall"): every new broadcast goes to
//! every link but the one it came on (and its sender's own), and a
//! deduplication cache of message ids, bounded in time and in count,
//! suppresses copies. Another strategy (an epidemic broadcast tree between
//! rs2p peers, say) sits beside it by implementing [`Dissemination`].

mod flood;
mod seen;

pub use flood::Flood;
pub use seen::{MixHasher, SeenCache};

use super::ConnId;
use crate::id::MsgId;
use crate::Now;

/// What a strategy makes of a broadcast that arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First copy: deliver it (the relay targets were written out).
    Fresh,
    /// A copy of a broadcast already seen: drop it.
    Duplicate,
}

/// A broadcast strategy: the seam between membership and relaying.
///
/// The mesh tells it which links exist ([`Dissemination::link_up`],
/// [`Dissemination::link_down`]) and asks it, for every broadcast, where
/// the frame goes. It never sees sockets or clocks other than `now`.
pub trait Dissemination: std::fmt::Debug + Send {
    /// A handshaken link; `rs2p` tells whether the peer is rs2p.
    fn link_up(&mut self, conn: ConnId, rs2p: bool);
    /// A link went away.
    fn link_down(&mut self, conn: ConnId);
    /// We originate broadcast `id`: remember it and write its targets.
    fn publish(&mut self, now: Now, id: &MsgId, targets: &mut Vec<ConnId>);
    /// Remembers `id` as seen without sending it anywhere (a message sent on
    /// one link only, whose flood must not come back through us).
    fn mark_seen(&mut self, now: Now, id: &MsgId);
    /// Broadcast `id` arrived on `from`; `origin` is the link to its original
    /// sender, if direct. For a fresh one, writes the relay targets.
    fn receive(
        &mut self,
        now: Now,
        from: ConnId,
        origin: Option<ConnId>,
        id: &MsgId,
        targets: &mut Vec<ConnId>,
    ) -> Verdict;
    /// When the strategy next needs [`Dissemination::handle_timeout`]
    /// (monotonic ms), if ever.
    fn poll_timeout(&self) -> Option<u64>;
    /// Periodic work that is due at `now` (cache expiry, ...).
    fn handle_timeout(&mut self, now: Now);
}
