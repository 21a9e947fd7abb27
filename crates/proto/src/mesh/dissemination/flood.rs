//! py2p's flood: relay every new broadcast to every other link.

use super::{Dissemination, Push, SeenCache, TreeControl, Verdict};
use crate::id::{MsgId, PeerId};
use crate::mesh::ConnId;
use crate::wire::Frame;
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
    fn link_up(&mut self, conn: ConnId, _tree: bool) {
        if !self.links.contains(&conn) {
            self.links.push(conn);
        }
    }

    fn link_down(&mut self, conn: ConnId) {
        self.links.retain(|&c| c != conn);
    }

    fn publish(&mut self, now: Now, _sender: &PeerId, frame: &Frame, out: &mut Vec<Push>) {
        self.seen.insert(&frame.id(), now.mono_ms);
        out.extend(self.links.iter().map(|&c| Push::Payload(c, frame.clone())));
    }

    fn has_seen(&self, id: &MsgId) -> bool {
        self.seen.contains(id)
    }

    fn mark_seen(&mut self, now: Now, id: &MsgId) {
        self.seen.insert(id, now.mono_ms);
    }

    fn receive(
        &mut self,
        now: Now,
        from: ConnId,
        origin: Option<ConnId>,
        _sender: &PeerId,
        frame: &Frame,
        out: &mut Vec<Push>,
    ) -> Verdict {
        if !self.seen.insert(&frame.id(), now.mono_ms) {
            return Verdict::Duplicate;
        }
        let targets = self.links.iter().copied().filter(|&c| c != from && Some(c) != origin);
        out.extend(targets.map(|c| Push::Payload(c, frame.clone())));
        Verdict::Fresh
    }

    fn on_control(&mut self, _now: Now, _from: ConnId, _control: TreeControl, _out: &mut Vec<Push>) {}

    fn flush(&mut self, _now: Now, _out: &mut Vec<Push>) {}

    fn poll_timeout(&self) -> Option<u64> {
        self.seen.next_expiry().map(|t| t.div_ceil(EXPIRY_GRANULARITY_MS) * EXPIRY_GRANULARITY_MS)
    }

    fn handle_timeout(&mut self, now: Now, _out: &mut Vec<Push>) {
        self.seen.expire(now.mono_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MsgType;

    #[test]
    fn relays_to_every_other_link_once() {
        let mut f = Flood::new(60_000, 16, 1);
        for c in 1..=4 {
            f.link_up(ConnId(c), false);
        }
        let now = Now { mono_ms: 10, unix_ms: 0 };
        let frame = Frame::build(MsgType::Broadcast, &PeerId::random(b"s"), 1, 0u64, &[]);
        let mut out = Vec::new();
        let s = PeerId::random(b"s");
        assert_eq!(f.receive(now, ConnId(2), Some(ConnId(3)), &s, &frame, &mut out), Verdict::Fresh);
        assert_eq!(out, vec![Push::Payload(ConnId(1), frame.clone()), Push::Payload(ConnId(4), frame.clone())]);
        out.clear();
        assert_eq!(f.receive(now, ConnId(1), None, &s, &frame, &mut out), Verdict::Duplicate);
        assert!(out.is_empty());
        f.link_down(ConnId(4));
        let other = Frame::build(MsgType::Broadcast, &PeerId::random(b"s"), 2, 0u64, &[]);
        f.publish(now, &s, &other, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(f.poll_timeout(), Some(61_000));
        f.handle_timeout(Now { mono_ms: 60_010, unix_ms: 0 }, &mut out);
        assert_eq!(f.poll_timeout(), None);
    }
}
