//! An epidemic broadcast tree between rs2p peers (Plumtree: Leitão,
//! Pereira, Rodrigues, SRDS 2007), flooding toward the others.
//!
//! Each tree link is *eager* (new broadcasts are pushed to it whole) or
//! *lazy* (only their ids are announced, in batches: `IHave`). Links start
//! eager, so the first broadcasts flood; a node that receives a copy it
//! already has *prunes* the link it came on (it becomes lazy on both ends),
//! which leaves a spanning tree of the first arrivals. When an announced id
//! does not arrive whole within [`TreeConfig::graft_timeout_ms`], the node
//! *grafts* the announcer (the link becomes eager again and the message is
//! sent), then the next announcer after [`TreeConfig::regraft_timeout_ms`]:
//! the tree repairs itself when a node or link fails, and moves toward a
//! lazy path that is faster than its eager one by more than the timeout.
//!
//! Links to peers that do not speak the tree (py2p, older rs2p) keep py2p's
//! flood both ways: they get every new broadcast whole, so a mixed network
//! still delivers everything. Ids and the 60 s window are py2p's, so a
//! message keeps its identity across py2p and rs2p hops.
//!
//! The eager payload is py2p's frame byte for byte, so it carries no hop
//! count: the tree optimises by timing (a graft), not by hop counts.

use std::collections::{HashMap, VecDeque};

use super::{Dissemination, Push, SeenCache, TreeControl, Verdict};
use crate::id::MsgId;
use crate::mesh::{ConnId, ConnMap};
use crate::wire::message::MAX_IDS_PER_MESSAGE;
use crate::wire::Frame;
use crate::Now;

/// Expiry of remembered ids and cached messages is batched: at most one
/// wake-up a second for it.
const EXPIRY_GRANULARITY_MS: u64 = 1_000;
/// Most announced-but-missing messages tracked at once (announcements past
/// it are ignored: a peer cannot grow this without bound).
const MAX_MISSING: usize = 65_536;

/// Settings of the broadcast tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeConfig {
    /// How long an announced message may take to arrive whole before the
    /// announcer is grafted. Default 80 ms (iroh-gossip's default; the
    /// paper: a few round trips).
    pub graft_timeout_ms: u64,
    /// How long a grafted message may take before the next announcer is
    /// grafted. Default 40 ms (the paper: about a round trip).
    pub regraft_timeout_ms: u64,
    /// How long messages are kept to answer grafts. Default 30 s.
    pub cache_ms: u64,
    /// Most bytes of messages kept to answer grafts (oldest go first).
    /// Default 4 MiB.
    pub cache_bytes: usize,
}

impl Default for TreeConfig {
    fn default() -> Self {
        TreeConfig { graft_timeout_ms: 80, regraft_timeout_ms: 40, cache_ms: 30_000, cache_bytes: 4 << 20 }
    }
}

/// Recent messages, to answer grafts. Frames are copied in (a received
/// frame is a slice of its read buffer, which it would keep alive).
#[derive(Debug, Default)]
struct MessageCache {
    frames: HashMap<MsgId, Frame>,
    order: VecDeque<(u64, MsgId)>,
    bytes: usize,
}

impl MessageCache {
    fn put(&mut self, now_ms: u64, frame: &Frame, max_bytes: usize) {
        let id = frame.id();
        if self.frames.contains_key(&id) {
            return;
        }
        let copy = frame.detached();
        self.bytes += copy.wire_bytes().len();
        self.frames.insert(id, copy);
        self.order.push_back((now_ms, id));
        while self.bytes > max_bytes {
            if !self.pop_oldest() {
                break;
            }
        }
    }

    fn pop_oldest(&mut self) -> bool {
        let Some((_, id)) = self.order.pop_front() else { return false };
        if let Some(f) = self.frames.remove(&id) {
            self.bytes -= f.wire_bytes().len();
        }
        true
    }

    fn expire(&mut self, now_ms: u64, keep_ms: u64) {
        while self.order.front().is_some_and(|&(t, _)| t.saturating_add(keep_ms) <= now_ms) {
            self.pop_oldest();
        }
    }

    fn next_expiry(&self, keep_ms: u64) -> Option<u64> {
        self.order.front().map(|&(t, _)| t.saturating_add(keep_ms))
    }
}

/// Counters of the tree, for status reports and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Prunes sent (a duplicate came on an eager link).
    pub prunes: u64,
    /// Grafts sent (an announced message did not arrive in time).
    pub grafts: u64,
    /// Message ids announced.
    pub announced: u64,
    /// Messages sent in answer to grafts.
    pub served: u64,
}

/// The broadcast tree. See the [module docs](self).
#[derive(Debug)]
pub struct Tree {
    cfg: TreeConfig,
    seen: SeenCache,
    /// Tree links pushed to.
    eager: Vec<ConnId>,
    /// Tree links announced to.
    lazy: Vec<ConnId>,
    /// Links that do not speak the tree: flooded.
    flood: Vec<ConnId>,
    cache: MessageCache,
    /// Announced but missing messages, with who announced them, in order.
    missing: HashMap<MsgId, VecDeque<ConnId>>,
    /// Graft deadlines after a first announcement (monotonic: one timeout).
    first_grafts: VecDeque<(u64, MsgId)>,
    /// Deadlines after a graft, for the next announcer.
    next_grafts: VecDeque<(u64, MsgId)>,
    /// Announcements waiting for the end of the current input.
    announce: ConnMap<Vec<MsgId>>,
    stats: TreeStats,
}

impl Tree {
    /// A tree remembering ids for `keep_ms` (py2p's window plus the clock
    /// skew allowed), at most `capacity` of them; `key` randomises the
    /// id cache's hash.
    pub fn new(cfg: TreeConfig, keep_ms: u64, capacity: usize, key: u64) -> Self {
        Tree {
            cfg,
            seen: SeenCache::new(keep_ms, capacity, key),
            eager: Vec::new(),
            lazy: Vec::new(),
            flood: Vec::new(),
            cache: MessageCache::default(),
            missing: HashMap::new(),
            first_grafts: VecDeque::new(),
            next_grafts: VecDeque::new(),
            announce: ConnMap::default(),
            stats: TreeStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> TreeStats {
        self.stats
    }

    /// Tree links currently pushed to.
    pub fn eager(&self) -> &[ConnId] {
        &self.eager
    }

    /// Tree links currently announced to.
    pub fn lazy(&self) -> &[ConnId] {
        &self.lazy
    }

    fn make_eager(&mut self, conn: ConnId) {
        if let Some(i) = self.lazy.iter().position(|&c| c == conn) {
            self.lazy.swap_remove(i);
            self.eager.push(conn);
        }
    }

    fn make_lazy(&mut self, conn: ConnId) {
        if let Some(i) = self.eager.iter().position(|&c| c == conn) {
            self.eager.swap_remove(i);
            self.lazy.push(conn);
        }
    }

    fn is_tree_link(&self, conn: ConnId) -> bool {
        self.eager.contains(&conn) || self.lazy.contains(&conn)
    }

    /// Pushes `frame` to the eager and flood links and queues its id for the
    /// lazy ones, skipping `from` and `origin`.
    fn forward(&mut self, frame: &Frame, id: MsgId, skip: [Option<ConnId>; 2], out: &mut Vec<Push>) {
        let keep = |c: &ConnId| !skip.contains(&Some(*c));
        for &c in self.eager.iter().chain(self.flood.iter()).filter(|c| keep(c)) {
            out.push(Push::Payload(c, frame.clone()));
        }
        for &c in self.lazy.iter().filter(|c| keep(c)) {
            self.announce.entry(c).or_default().push(id);
        }
    }

    fn graft_due(&mut self, now: Now, id: MsgId, out: &mut Vec<Push>) {
        if self.seen.contains(&id) {
            self.missing.remove(&id);
            return;
        }
        let Some(announcers) = self.missing.get_mut(&id) else { return };
        // The first announcer still linked.
        let mut next = None;
        while let Some(c) = announcers.pop_front() {
            if self.eager.contains(&c) || self.lazy.contains(&c) {
                next = Some(c);
                break;
            }
        }
        let Some(conn) = next else {
            self.missing.remove(&id);
            return;
        };
        self.make_eager(conn);
        self.stats.grafts += 1;
        out.push(Push::Control(conn, TreeControl::Graft(vec![id])));
        self.next_grafts.push_back((now.mono_ms + self.cfg.regraft_timeout_ms, id));
    }
}

impl Dissemination for Tree {
    fn link_up(&mut self, conn: ConnId, tree: bool) {
        if self.is_tree_link(conn) || self.flood.contains(&conn) {
            return;
        }
        if tree {
            self.eager.push(conn);
        } else {
            self.flood.push(conn);
        }
    }

    fn link_down(&mut self, conn: ConnId) {
        self.eager.retain(|&c| c != conn);
        self.lazy.retain(|&c| c != conn);
        self.flood.retain(|&c| c != conn);
        self.announce.remove(&conn);
    }

    fn publish(&mut self, now: Now, frame: &Frame, out: &mut Vec<Push>) {
        let id = frame.id();
        self.seen.insert(&id, now.mono_ms);
        self.cache.put(now.mono_ms, frame, self.cfg.cache_bytes);
        self.forward(frame, id, [None, None], out);
    }

    fn mark_seen(&mut self, now: Now, id: &MsgId) {
        self.seen.insert(id, now.mono_ms);
    }

    fn receive(
        &mut self,
        now: Now,
        from: ConnId,
        origin: Option<ConnId>,
        frame: &Frame,
        out: &mut Vec<Push>,
    ) -> Verdict {
        let id = frame.id();
        if !self.seen.insert(&id, now.mono_ms) {
            if self.eager.contains(&from) {
                self.make_lazy(from);
                self.stats.prunes += 1;
                out.push(Push::Control(from, TreeControl::Prune));
            }
            return Verdict::Duplicate;
        }
        self.missing.remove(&id);
        self.cache.put(now.mono_ms, frame, self.cfg.cache_bytes);
        // It brought something new: it is a good parent.
        self.make_eager(from);
        self.forward(frame, id, [Some(from), origin], out);
        Verdict::Fresh
    }

    fn on_control(&mut self, now: Now, from: ConnId, control: TreeControl, out: &mut Vec<Push>) {
        if !self.is_tree_link(from) {
            return; // not a tree link: a peer that did not negotiate it
        }
        match control {
            TreeControl::Prune => self.make_lazy(from),
            TreeControl::Graft(ids) => {
                self.make_eager(from);
                for id in ids {
                    if let Some(f) = self.cache.frames.get(&id) {
                        self.stats.served += 1;
                        out.push(Push::Payload(from, f.clone()));
                    }
                }
            }
            TreeControl::IHave(ids) => {
                for id in ids {
                    if self.seen.contains(&id) || (self.missing.len() >= MAX_MISSING && !self.missing.contains_key(&id))
                    {
                        continue;
                    }
                    let announcers = self.missing.entry(id).or_default();
                    if announcers.is_empty() {
                        self.first_grafts.push_back((now.mono_ms + self.cfg.graft_timeout_ms, id));
                    }
                    if !announcers.contains(&from) {
                        announcers.push_back(from);
                    }
                }
            }
        }
    }

    fn flush(&mut self, out: &mut Vec<Push>) {
        if self.announce.is_empty() {
            return;
        }
        let mut pending: Vec<(ConnId, Vec<MsgId>)> = self.announce.drain().collect();
        pending.sort_by_key(|(c, _)| *c);
        for (conn, ids) in pending {
            for chunk in ids.chunks(MAX_IDS_PER_MESSAGE) {
                self.stats.announced += chunk.len() as u64;
                out.push(Push::Control(conn, TreeControl::IHave(chunk.to_vec())));
            }
        }
    }

    fn poll_timeout(&self) -> Option<u64> {
        let round = |t: u64| t.div_ceil(EXPIRY_GRANULARITY_MS) * EXPIRY_GRANULARITY_MS;
        [
            self.seen.next_expiry().map(round),
            self.cache.next_expiry(self.cfg.cache_ms).map(round),
            self.first_grafts.front().map(|&(t, _)| t),
            self.next_grafts.front().map(|&(t, _)| t),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn tree_stats(&self) -> Option<TreeStats> {
        Some(self.stats)
    }

    fn handle_timeout(&mut self, now: Now, out: &mut Vec<Push>) {
        self.seen.expire(now.mono_ms);
        self.cache.expire(now.mono_ms, self.cfg.cache_ms);
        while let Some(&(t, id)) = self.first_grafts.front() {
            if t > now.mono_ms {
                break;
            }
            self.first_grafts.pop_front();
            self.graft_due(now, id, out);
        }
        while let Some(&(t, id)) = self.next_grafts.front() {
            if t > now.mono_ms {
                break;
            }
            self.next_grafts.pop_front();
            self.graft_due(now, id, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::PeerId;
    use crate::wire::MsgType;

    const A: ConnId = ConnId(1);
    const B: ConnId = ConnId(2);
    const C: ConnId = ConnId(3);
    const PY: ConnId = ConnId(9);

    fn at(ms: u64) -> Now {
        Now { mono_ms: ms, unix_ms: 1_700_000_000_000 + ms }
    }

    fn frame(n: u64) -> Frame {
        Frame::build(MsgType::Broadcast, &PeerId::random(b"origin"), 1_700_000_000, 0u64, &[n.into()])
    }

    /// A node with tree links A, B, C and a py2p link PY.
    fn tree() -> Tree {
        let mut t = Tree::new(TreeConfig::default(), 60_000, 1024, 7);
        for c in [A, B, C] {
            t.link_up(c, true);
        }
        t.link_up(PY, false);
        t
    }

    fn run(f: impl FnOnce(&mut Vec<Push>)) -> Vec<Push> {
        let mut out = Vec::new();
        f(&mut out);
        out
    }

    #[test]
    fn first_copy_goes_eager_to_all_and_a_duplicate_prunes() {
        let mut t = tree();
        let m = frame(1);
        let out = run(|o| assert_eq!(t.receive(at(0), A, None, &m, o), Verdict::Fresh));
        assert_eq!(out, vec![Push::Payload(B, m.clone()), Push::Payload(C, m.clone()), Push::Payload(PY, m.clone())]);
        // The same message from B: B's link becomes lazy, B is told.
        let out = run(|o| assert_eq!(t.receive(at(1), B, None, &m, o), Verdict::Duplicate));
        assert_eq!(out, vec![Push::Control(B, TreeControl::Prune)]);
        // From the py2p link: dropped, nothing said (py2p knows no prunes).
        let out = run(|o| assert_eq!(t.receive(at(2), PY, None, &m, o), Verdict::Duplicate));
        assert_eq!(out, vec![]);
        // Once lazy, a duplicate from B is not pruned twice.
        let out = run(|o| assert_eq!(t.receive(at(3), B, None, &m, o), Verdict::Duplicate));
        assert_eq!(out, vec![]);
        assert_eq!(t.lazy(), &[B]);
        assert_eq!(t.stats().prunes, 1);
    }

    #[test]
    fn lazy_links_get_announcements_batched_per_input() {
        let mut t = tree();
        t.on_control(at(0), C, TreeControl::Prune, &mut Vec::new());
        let (m1, m2) = (frame(1), frame(2));
        let out = run(|o| {
            t.receive(at(1), A, None, &m1, o);
            t.receive(at(1), A, None, &m2, o);
        });
        assert_eq!(
            out,
            vec![
                Push::Payload(B, m1.clone()),
                Push::Payload(PY, m1.clone()),
                Push::Payload(B, m2.clone()),
                Push::Payload(PY, m2.clone()),
            ]
        );
        let out = run(|o| t.flush(o));
        assert_eq!(out, vec![Push::Control(C, TreeControl::IHave(vec![m1.id(), m2.id()]))]);
        assert_eq!(run(|o| t.flush(o)), vec![]);
        // The origin's own link is skipped too.
        let m3 = frame(3);
        let out = run(|o| {
            t.receive(at(2), A, Some(B), &m3, o);
            t.flush(o);
        });
        assert_eq!(out, vec![Push::Payload(PY, m3.clone()), Push::Control(C, TreeControl::IHave(vec![m3.id()]))]);
    }

    #[test]
    fn a_missing_message_is_grafted_after_the_timeout_then_from_the_next_announcer() {
        let mut t = tree();
        let m = frame(1);
        let id = m.id();
        t.on_control(at(0), A, TreeControl::Prune, &mut Vec::new());
        t.on_control(at(0), B, TreeControl::Prune, &mut Vec::new());
        assert_eq!(run(|o| t.on_control(at(10), A, TreeControl::IHave(vec![id]), o)), vec![]);
        assert_eq!(run(|o| t.on_control(at(20), B, TreeControl::IHave(vec![id]), o)), vec![]);
        assert_eq!(t.poll_timeout(), Some(90));
        // Early: nothing.
        assert_eq!(run(|o| t.handle_timeout(at(89), o)), vec![]);
        // The first announcer is grafted (and becomes eager).
        assert_eq!(run(|o| t.handle_timeout(at(90), o)), vec![Push::Control(A, TreeControl::Graft(vec![id]))]);
        assert!(t.eager().contains(&A));
        assert_eq!(t.poll_timeout(), Some(130));
        // A does not deliver in time: the next announcer is grafted.
        assert_eq!(run(|o| t.handle_timeout(at(130), o)), vec![Push::Control(B, TreeControl::Graft(vec![id]))]);
        // B delivers: fresh; no more grafts.
        let out = run(|o| assert_eq!(t.receive(at(140), B, None, &m, o), Verdict::Fresh));
        assert!(out.iter().all(|p| matches!(p, Push::Payload(..))), "{out:?}");
        assert_eq!(run(|o| t.handle_timeout(at(200), o)), vec![]);
        assert_eq!(t.stats().grafts, 2);
    }

    #[test]
    fn an_announcement_of_a_message_we_have_is_ignored_and_arrival_cancels_the_graft() {
        let mut t = tree();
        let m = frame(1);
        t.receive(at(0), A, None, &m, &mut Vec::new());
        assert_eq!(run(|o| t.on_control(at(1), B, TreeControl::IHave(vec![m.id()]), o)), vec![]);
        let m2 = frame(2);
        t.on_control(at(2), B, TreeControl::IHave(vec![m2.id()]), &mut Vec::new());
        t.receive(at(50), A, None, &m2, &mut Vec::new());
        assert_eq!(run(|o| t.handle_timeout(at(100), o)), vec![]);
        assert_eq!(t.stats().grafts, 0);
    }

    #[test]
    fn a_graft_is_answered_from_the_cache_and_makes_the_link_eager() {
        let mut t = tree();
        let m = frame(1);
        t.publish(at(0), &m, &mut Vec::new());
        t.on_control(at(1), C, TreeControl::Prune, &mut Vec::new());
        assert!(t.lazy().contains(&C));
        let unknown = frame(99).id();
        let out = run(|o| t.on_control(at(2), C, TreeControl::Graft(vec![m.id(), unknown]), o));
        assert_eq!(out, vec![Push::Payload(C, m.clone())]);
        assert!(t.eager().contains(&C));
        // Forgotten after the cache time: a late graft gets nothing.
        t.handle_timeout(at(31_000), &mut Vec::new());
        let out = run(|o| t.on_control(at(31_001), C, TreeControl::Graft(vec![m.id()]), o));
        assert_eq!(out, vec![]);
    }

    #[test]
    fn the_tree_repairs_when_the_eager_parent_goes() {
        // A was our parent; B and C are lazy. A's link dies; the next
        // message is announced by B: we graft B, which becomes our parent.
        let mut t = tree();
        t.on_control(at(0), B, TreeControl::Prune, &mut Vec::new());
        t.on_control(at(0), C, TreeControl::Prune, &mut Vec::new());
        t.link_down(A);
        let m = frame(5);
        t.on_control(at(10), B, TreeControl::IHave(vec![m.id()]), &mut Vec::new());
        let out = run(|o| t.handle_timeout(at(90), o));
        assert_eq!(out, vec![Push::Control(B, TreeControl::Graft(vec![m.id()]))]);
        assert_eq!(t.receive(at(95), B, None, &m, &mut Vec::new()), Verdict::Fresh);
        assert_eq!(t.eager(), &[B]);
    }

    #[test]
    fn control_from_a_link_without_the_tree_is_ignored_and_the_cache_is_bounded() {
        let mut t = tree();
        let m = frame(1);
        assert_eq!(run(|o| t.on_control(at(0), PY, TreeControl::IHave(vec![m.id()]), o)), vec![]);
        assert_eq!(t.poll_timeout(), None);
        let mut small = Tree::new(TreeConfig { cache_bytes: 300, ..TreeConfig::default() }, 60_000, 1024, 7);
        for n in 0..10 {
            small.publish(at(n), &frame(n), &mut Vec::new());
        }
        assert!(small.cache.bytes <= 300 && small.cache.frames.len() < 10);
    }
}
