//! py2p's flood: relay every new broadcast to every other link.

use super::{Dissemination, SeenCache, Verdict};
use crate::id::MsgId;
use crate::mesh::ConnId;
use crate::Now;

/// Expiry of remembered ids is batched: at most one wake-up a second for it.
const EXPIRY_GRANULARITY_MS: u64 = 1_000;

/// Flooding with a deduplication cache (py2p's "waterfall").
#[derive(Debug)]
pub struct Flood {
    seen: SeenCache,
    /// Handshaken links, in the order they came up.
    links: Vec<ConnId>,
}

impl Flood {
    /// Remembers ids for `keep_ms` (py2p's 60 s window plus the clock skew
    /// allowed), at most `capacity` of them; `key` randomises the cache's
    /// hash.
    pub fn new(keep_ms: u64, capacity: usize, key: u64) -> Self {
        Flood { seen: SeenCache::new(keep_ms, capacity, key), links: Vec::new() }
    }
}

impl Dissemination for Flood {
    fn link_up(&mut self, conn: ConnId, _rs2p: bool) {
        if !self.links.contains(&conn) {
            self.links.push(conn);
        }
    }

    fn link_down(&mut self, conn: ConnId) {
        self.links.retain(|&c| c != conn);
    }

    fn publish(&mut self, now: Now, id: &MsgId, targets: &mut Vec<ConnId>) {
        self.seen.insert(id, now.mono_ms);
        targets.extend_from_slice(&self.links);
    }

    fn mark_seen(&mut self, now: Now, id: &MsgId) {
        self.seen.insert(id, now.mono_ms);
    }

    fn receive(
        &mut self,
        now: Now,
        from: ConnId,
        origin: Option<ConnId>,
        id: &MsgId,
        targets: &mut Vec<ConnId>,
    ) -> Verdict {
        if !self.seen.insert(id, now.mono_ms) {
            return Verdict::Duplicate;
        }
        targets.extend(self.links.iter().copied().filter(|&c| c != from && Some(c) != origin));
        Verdict::Fresh
    }

    fn poll_timeout(&self) -> Option<u64> {
        self.seen.next_expiry().map(|t| t.div_ceil(EXPIRY_GRANULARITY_MS) * EXPIRY_GRANULARITY_MS)
    }

    fn handle_timeout(&mut self, now: Now) {
        self.seen.expire(now.mono_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_to_every_other_link_once() {
        let mut f = Flood::new(60_000, 16, 1);
        for c in 1..=4 {
            f.link_up(ConnId(c), false);
        }
        let now = Now { mono_ms: 10, unix_ms: 0 };
        let id = MsgId([7; 32]);
        let mut t = Vec::new();
        assert_eq!(f.receive(now, ConnId(2), Some(ConnId(3)), &id, &mut t), Verdict::Fresh);
        assert_eq!(t, vec![ConnId(1), ConnId(4)]);
        t.clear();
        assert_eq!(f.receive(now, ConnId(1), None, &id, &mut t), Verdict::Duplicate);
        assert!(t.is_empty());
        f.link_down(ConnId(4));
        f.publish(now, &MsgId([8; 32]), &mut t);
        assert_eq!(t, vec![ConnId(1), ConnId(2), ConnId(3)]);
        assert_eq!(f.poll_timeout(), Some(61_000));
        f.handle_timeout(Now { mono_ms: 60_010, unix_ms: 0 });
        assert_eq!(f.poll_timeout(), None);
    }
}
