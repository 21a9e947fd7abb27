//! py2p's connection-conflict rule: when two nodes dial each other at
//! once, both must keep the same one of the two connections.

use crate::id::PeerId;

/// Which of two connections to the same peer survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Keep the connection already in the routing table.
    Existing,
    /// Keep the connection whose handshake just arrived.
    New,
}

/// py2p's rule (`__resolve_connection_conflict`): keep the existing
/// connection iff `(our id > their id) XOR (the new connection is
/// outgoing)`. When the two connections were dialed from opposite ends,
/// both nodes thereby keep the one dialed by the node with the greater id.
pub fn resolve_conflict(me: &PeerId, peer: &PeerId, new_is_outgoing: bool) -> Keep {
    let me_greater = me.numeric_cmp(peer) == std::cmp::Ordering::Greater;
    if me_greater ^ new_is_outgoing {
        Keep::Existing
    } else {
        Keep::New
    }
}
