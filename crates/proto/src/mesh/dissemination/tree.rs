//! An epidemic broadcast tree between rs2p peers (Plumtree: Leitão,
//! Pereira, Rodrigues, SRDS 2007), flooding toward the others.
//!
//! Each tree link is, for each origin (the node that broadcast), *eager*
//! (new broadcasts of that origin are pushed to it whole) or *lazy* (only
//! their ids are announced, in batches: `IHave`). Links start eager, so an
//! origin's first broadcasts flood; a node that receives a copy it already
//! has *prunes* the link it came on for that origin (it becomes lazy on
//! both ends), which leaves, per origin, a spanning tree of the first
//! arrivals. When an announced id does not arrive whole within
//! [`TreeConfig::graft_timeout_ms`], the node *grafts* the announcer (the
//! link becomes eager again for that origin and the message is sent), then
//! the next announcer after [`TreeConfig::regraft_timeout_ms`]: the tree
//! repairs itself when a node or link fails, and moves toward a lazy path
//! that is faster than its eager one by more than the timeout.
//!
//! The paper keeps one eager set for all origins. With several senders at
//! once that set keeps changing (a link redundant for one origin is needed
//! by another), and deliveries wait for grafts; a tree per origin settles
//! (measured in BENCHMARKS.md). Origins are remembered for a bounded
//! number; a forgotten one starts eager again.
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
use crate::id::{MsgId, PeerId};
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
/// Most origins whose tree is remembered (the least recently active is
/// forgotten first, and starts eager again).
const MAX_ORIGINS: usize = 4_096;

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
    /// How much longer than `graft_timeout_ms` a missing message may wait
    /// while its origin's messages keep arriving on the tree (one arrived
    /// within this time) and none announced after it has arrived: then the
    /// tree is busy (announcements overtake a backlog queued on the way),
    /// not broken, and a graft would only open a second path into the
    /// same backlog. Default 1 s.
    pub busy_patience_ms: u64,
    /// Whether announcements (`IHave`) go ahead of the broadcasts queued
    /// on a link, like grafts, prunes and keepalives do. Default `false`:
    /// they follow them. An announcement that overtakes a backlog arrives
    /// before the eager copy it announces, on every lazy link at once, so
    /// a node that is merely busy looks broken to its neighbours: measured
    /// on a 20-node mesh under a burst, announcing ahead caused 40,000 to
    /// 1,400,000 grafts, more redundancy than flooding, and lost messages
    /// (announced ids past the tracking bound, grafts answered after the
    /// cache dropped them); announcing in order caused 0 to 60,000 and lost
    /// none (BENCHMARKS.md). Grafts, prunes, keepalives and the answers to
    /// grafts always go ahead.
    pub announce_ahead: bool,
    /// How long announcements wait to be sent together (the first one
    /// waits at most this long). Default 10 ms: on a busy node a lazy link
    /// gets one `IHave` per interval instead of one per message. 0 sends
    /// them at the end of every input.
    pub announce_interval_ms: u64,
    /// How long messages are kept to answer grafts and wants. Default
    /// 10 s: asks come within a few seconds (patience, retries), and the
    /// cache costs memory in proportion to the message rate.
    pub cache_ms: u64,
    /// Most bytes of messages kept to answer grafts (oldest go first).
    /// Default 16 MiB: a graft may come a second or more after the message
    /// on a busy network, and a message no longer cached cannot be sent.
    pub cache_bytes: usize,
}

impl Default for TreeConfig {
    fn default() -> Self {
        TreeConfig {
            graft_timeout_ms: 80,
            regraft_timeout_ms: 40,
            busy_patience_ms: 1_000,
            announce_ahead: false,
            announce_interval_ms: 10,
            cache_ms: 10_000,
            cache_bytes: 16 << 20,
        }
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
    /// Grafts sent (an announced message did not arrive in time, and its
    /// origin's messages stopped coming: the link becomes eager).
    pub grafts: u64,
    /// Messages asked for without grafting (a hole in a stream that still
    /// flows).
    pub wants: u64,
    /// Message ids announced.
    pub announced: u64,
    /// Messages sent in answer to grafts.
    pub served: u64,
    /// Grafts put off because the origin's messages were still arriving
    /// (see [`TreeConfig::busy_patience_ms`]).
    pub postponed: u64,
    /// Announced ids not tracked because too many were missing already.
    pub ignored: u64,
    /// Missing messages given up on (no announcer left, or too old).
    pub given_up: u64,
    /// Grafted ids no longer in the cache (not sent).
    pub unserved: u64,
}

/// One origin's tree, as this node sees it: which links are lazy for it
/// (every other tree link is eager).
#[derive(Debug, Default)]
struct Origin {
    lazy: Vec<ConnId>,
    /// When one of its messages last arrived new (monotonic ms), and on
    /// which link (our parent in its tree).
    last_fresh_ms: Option<u64>,
    parent: Option<ConnId>,
    /// Its messages announced to us while missing, counted (each missing
    /// message gets the next number).
    announced: u64,
    /// The highest such number among those that then arrived whole.
    arrived_seq: u64,
    /// When we last grafted a link for it.
    last_graft_ms: Option<u64>,
    /// When one of its messages last came (monotonic ms), to forget the
    /// least active first.
    active_ms: u64,
}

/// The broadcast tree: one epidemic broadcast tree per origin (Plumtree)
/// between peers that speak it, py2p's flood toward the others; eager
/// pushes, batched announcements, prunes on duplicates, grafts and wants
/// on evidence of loss (the design and its measurements are in the
/// source's module docs and BENCHMARKS.md; the settings in [`TreeConfig`]).
#[derive(Debug)]
pub struct Tree {
    cfg: TreeConfig,
    seen: SeenCache,
    /// Links that speak the tree.
    links: Vec<ConnId>,
    /// Links that do not: flooded.
    flood: Vec<ConnId>,
    /// Keyed by a seeded fast hash (ids are the peers' choice; the seed is
    /// the node's own).
    origins: Origins,
    cache: MessageCache,
    /// Announced but missing messages.
    missing: HashMap<MsgId, Missing>,
    /// Graft deadlines after a first announcement (monotonic: one timeout).
    first_grafts: VecDeque<(u64, MsgId)>,
    /// Deadlines after a graft, for the next announcer.
    next_grafts: VecDeque<(u64, MsgId)>,
    /// Deadlines to start over with the first announcer.
    retry_grafts: VecDeque<(u64, MsgId)>,
    /// Messages that arrived in answer to a want, until their eager copy
    /// comes (or the cache time passes).
    wanted_answers: Expiring,
    /// Announcements waiting to be sent, and when they are due.
    announce: ConnMap<Vec<(PeerId, MsgId)>>,
    announce_due: Option<u64>,
    stats: TreeStats,
}

/// Whether a control message re-shapes the tree (a graft) or not.
enum Kind {
    Graft,
    Other,
}

/// A bounded set of ids with their insertion time, oldest forgotten first.
#[derive(Debug, Default)]
struct Expiring {
    ids: HashMap<MsgId, u64>,
    order: VecDeque<(u64, MsgId)>,
}

impl Expiring {
    fn insert(&mut self, id: MsgId, now_ms: u64) {
        if self.ids.len() >= MAX_MISSING {
            if let Some((_, old)) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        if self.ids.insert(id, now_ms).is_none() {
            self.order.push_back((now_ms, id));
        }
    }

    /// Whether `id` was there (it no longer is).
    fn remove(&mut self, id: &MsgId) -> bool {
        self.ids.remove(id).is_some()
    }

    fn expire(&mut self, now_ms: u64, keep_ms: u64) {
        while let Some(&(t, id)) = self.order.front() {
            if t.saturating_add(keep_ms) > now_ms {
                break;
            }
            self.order.pop_front();
            if self.ids.get(&id) == Some(&t) {
                self.ids.remove(&id);
            }
        }
        if self.ids.is_empty() {
            self.order.clear();
        }
    }
}

/// A message announced to us that has not arrived.
#[derive(Debug)]
struct Missing {
    origin: PeerId,
    /// Who announced it, in order.
    announcers: VecDeque<ConnId>,
    /// The next announcer to graft (an index into `announcers`).
    next: usize,
    /// When it was first announced (monotonic ms).
    since_ms: u64,
    /// Its number among its origin's announced messages.
    seq: u64,
    /// Whether it was asked for with a want (the tree unchanged).
    wanted: bool,
}

/// `origin`'s tree in `origins`, remembered from now on (forgetting the
/// least recently active one when full).
type Origins = HashMap<PeerId, Origin, foldhash::fast::FixedState>;

fn origin_entry<'a>(origins: &'a mut Origins, origin: &PeerId, now_ms: u64) -> &'a mut Origin {
    // Looked up twice rather than cloning the id for `entry` on every
    // relay: the clone is an atomic count on the read buffer it points into.
    if !origins.contains_key(origin) {
        if origins.len() >= MAX_ORIGINS {
            if let Some(oldest) = origins.iter().min_by_key(|(_, o)| o.active_ms).map(|(k, _)| k.clone()) {
                origins.remove(&oldest);
            }
        }
        // A copy of its own: a key must not keep a read buffer alive.
        origins.insert(PeerId::from_bytes(origin.as_bytes().to_vec()), Origin::default());
    }
    let o = origins.get_mut(origin).expect("inserted above");
    o.active_ms = o.active_ms.max(now_ms);
    o
}

/// Groups `(origin, id)` pairs by origin, in first-seen order, at most
/// [`MAX_IDS_PER_MESSAGE`] ids a group.
fn group(pairs: Vec<(PeerId, MsgId)>) -> Vec<(PeerId, Vec<MsgId>)> {
    let mut groups: Vec<(PeerId, Vec<MsgId>)> = Vec::new();
    for (origin, id) in pairs {
        match groups.iter_mut().rev().find(|(o, ids)| *o == origin && ids.len() < MAX_IDS_PER_MESSAGE) {
            Some((_, ids)) => ids.push(id),
            None => groups.push((origin, vec![id])),
        }
    }
    groups
}

impl Tree {
    /// A tree remembering ids for `keep_ms` (py2p's window plus the clock
    /// skew allowed), at most `capacity` of them; `key` randomises the
    /// id cache's hash.
    pub fn new(cfg: TreeConfig, keep_ms: u64, capacity: usize, key: u64) -> Self {
        Tree {
            cfg,
            seen: SeenCache::new(keep_ms, capacity, key),
            links: Vec::new(),
            flood: Vec::new(),
            origins: HashMap::with_hasher(foldhash::fast::FixedState::with_seed(key ^ 0x6f72_6967)),
            cache: MessageCache::default(),
            missing: HashMap::new(),
            first_grafts: VecDeque::new(),
            next_grafts: VecDeque::new(),
            retry_grafts: VecDeque::new(),
            wanted_answers: Expiring::default(),
            announce: ConnMap::default(),
            announce_due: None,
            stats: TreeStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> TreeStats {
        self.stats
    }

    /// The tree links that are lazy for `origin`'s broadcasts (the others
    /// are eager).
    pub fn lazy_for(&self, origin: &PeerId) -> Vec<ConnId> {
        self.origins.get(origin).map(|o| o.lazy.clone()).unwrap_or_default()
    }

    /// The tree links that are eager for `origin`'s broadcasts.
    pub fn eager_for(&self, origin: &PeerId) -> Vec<ConnId> {
        let lazy = self.lazy_for(origin);
        self.links.iter().copied().filter(|c| !lazy.contains(c)).collect()
    }

    /// `origin`'s tree, remembered from now on (forgetting the least
    /// recently active one when full).
    fn origin(&mut self, origin: &PeerId, now_ms: u64) -> &mut Origin {
        origin_entry(&mut self.origins, origin, now_ms)
    }

    fn make_eager(&mut self, origin: &PeerId, conn: ConnId) {
        if let Some(o) = self.origins.get_mut(origin) {
            o.lazy.retain(|&c| c != conn);
        }
    }

    fn is_lazy(&self, origin: &PeerId, conn: ConnId) -> bool {
        self.origins.get(origin).is_some_and(|o| o.lazy.contains(&conn))
    }

    /// Pushes `frame` to the flood links and the eager ones for `origin`,
    /// queues its id for the lazy ones, skipping `skip`.
    fn forward(
        &mut self,
        now: Now,
        origin: &PeerId,
        frame: &Frame,
        id: MsgId,
        skip: [Option<ConnId>; 3],
        out: &mut Vec<Push>,
    ) {
        let keep = |c: &ConnId| !skip.contains(&Some(*c));
        for &c in self.flood.iter().filter(|c| keep(c)) {
            out.push(Push::Payload(c, frame.clone()));
        }
        let Tree { origins, links, announce, announce_due, cfg, cache, .. } = self;
        let o = origin_entry(origins, origin, now.mono_ms);
        let mut announced = false;
        for &c in links.iter().filter(|c| keep(c)) {
            if o.lazy.contains(&c) {
                announce.entry(c).or_default().push((origin.clone(), id));
                announce_due.get_or_insert(now.mono_ms + cfg.announce_interval_ms);
                announced = true;
            } else {
                out.push(Push::Payload(c, frame.clone()));
            }
        }
        // Only a peer we announced it to can ask for it: a message announced
        // to nobody (a chain, a leaf) is not cached.
        if announced {
            cache.put(now.mono_ms, frame, cfg.cache_bytes);
        }
    }

    /// A graft deadline for `id`: after its announcement, or after a graft
    /// that did not deliver.
    fn graft_due(&mut self, now: Now, id: MsgId, out: &mut Vec<Push>) {
        if self.seen.contains(&id) {
            self.missing.remove(&id);
            return;
        }
        let Some(m) = self.missing.get_mut(&id) else { return };
        let origin = m.origin.clone();
        // Graft on evidence that the tree lost it, not on lateness alone: on
        // a busy network every message is late, an announcer is as slow to
        // answer a graft as a parent is to push, and grafting anyway opens
        // more paths into the same backlog (measured: a storm of grafts).
        let (skipped, stalled) = match self.origins.get(&origin) {
            // Along one path an origin's messages keep their order: one
            // announced after this one arrived, so this one was lost.
            Some(o) => (
                o.arrived_seq > m.seq,
                o.last_fresh_ms.is_none_or(|t| t.saturating_add(self.cfg.busy_patience_ms) <= now.mono_ms),
            ),
            None => (false, true),
        };
        let waited_out =
            m.since_ms.saturating_add(self.cfg.graft_timeout_ms + self.cfg.busy_patience_ms) <= now.mono_ms;
        if !(skipped || stalled || waited_out) {
            self.stats.postponed += 1;
            self.first_grafts.push_back((now.mono_ms + self.cfg.graft_timeout_ms, id));
            return;
        }
        // The next announcer still linked; after the last, start over
        // (its answer may have been slow, not lost) a patience later, until
        // the message is too old to be in anyone's cache.
        let links = &self.links;
        m.announcers.retain(|c| links.contains(c));
        if m.announcers.is_empty() || now.mono_ms.saturating_sub(m.since_ms) >= self.cfg.cache_ms {
            self.stats.given_up += 1;
            self.missing.remove(&id);
            return;
        }
        if m.next >= m.announcers.len() {
            m.next = 0;
            self.retry_grafts.push_back((now.mono_ms + self.cfg.busy_patience_ms, id));
            return;
        }
        let conn = m.announcers[m.next];
        m.next += 1;
        let wanted = &mut m.wanted;
        // Re-parent (graft) when the origin's messages stopped coming or
        // this one waited out its patience; at most once a graft timeout
        // per origin (one new parent is enough, and more would only open
        // paths into the same backlog). Otherwise ask for the message alone.
        let regraft_ok = self
            .origins
            .get(&origin)
            .and_then(|o| o.last_graft_ms)
            .is_none_or(|t| t.saturating_add(self.cfg.graft_timeout_ms) <= now.mono_ms);
        let graft = (stalled || waited_out) && regraft_ok;
        *wanted = !graft;
        if graft {
            self.origin(&origin, now.mono_ms).last_graft_ms = Some(now.mono_ms);
            self.make_eager(&origin, conn);
            self.stats.grafts += 1;
            out.push(Push::Control(conn, TreeControl::Graft(vec![(origin, vec![id])])));
        } else {
            // A hole in a stream that still flows: fetch it, keep the tree.
            self.stats.wants += 1;
            out.push(Push::Control(conn, TreeControl::Want(vec![(origin, vec![id])])));
        }
        self.next_grafts.push_back((now.mono_ms + self.cfg.regraft_timeout_ms, id));
    }
}

impl Dissemination for Tree {
    fn link_up(&mut self, conn: ConnId, tree: bool) {
        if self.links.contains(&conn) || self.flood.contains(&conn) {
            return;
        }
        if tree {
            self.links.push(conn);
        } else {
            self.flood.push(conn);
        }
    }

    fn link_down(&mut self, conn: ConnId) {
        self.links.retain(|&c| c != conn);
        self.flood.retain(|&c| c != conn);
        for o in self.origins.values_mut() {
            o.lazy.retain(|&c| c != conn);
            if o.parent == Some(conn) {
                // Its messages will not come that way: missing ones are
                // grafted at their deadline.
                o.parent = None;
                o.last_fresh_ms = None;
            }
        }
        self.announce.remove(&conn);
    }

    fn publish(&mut self, now: Now, sender: &PeerId, frame: &Frame, out: &mut Vec<Push>) {
        let id = frame.id();
        self.seen.insert(&id, now.mono_ms);
        self.forward(now, sender, frame, id, [None, None, None], out);
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
        origin_link: Option<ConnId>,
        sender: &PeerId,
        frame: &Frame,
        out: &mut Vec<Push>,
    ) -> Verdict {
        let id = frame.id();
        if !self.seen.insert(&id, now.mono_ms) {
            // The eager copy of a message we fetched with a want is late,
            // not redundant: the link stays our parent.
            if !self.wanted_answers.ids.is_empty() && self.wanted_answers.remove(&id) {
                return Verdict::Duplicate;
            }
            if self.links.contains(&from) && !self.is_lazy(sender, from) {
                self.origin(sender, now.mono_ms).lazy.push(from);
                self.stats.prunes += 1;
                out.push(Push::Control(from, TreeControl::Prune(vec![sender.clone()])));
            }
            return Verdict::Duplicate;
        }
        // Evidence of loss (see `graft_due`) comes from the parent's stream
        // only, in its order: not from answers to grafts, nor from a link
        // that just took over (its stream is at another point).
        let missing = if self.missing.is_empty() { None } else { self.missing.remove(&id) };
        let asked = missing.as_ref().is_some_and(|m| m.next > 0);
        if missing.as_ref().is_some_and(|m| m.wanted) {
            self.wanted_answers.insert(id, now.mono_ms);
        }
        let o = self.origin(sender, now.mono_ms);
        if !asked {
            o.last_fresh_ms = Some(now.mono_ms);
            if o.parent == Some(from) {
                o.arrived_seq = o.arrived_seq.max(missing.map_or(0, |m| m.seq));
            }
            o.parent = Some(from);
            // It brought something new unasked: it is a good parent. If we
            // had pruned it, our prune crossed this push, and once it
            // arrives neither end would push: graft it back at once.
            let was_lazy = o.lazy.contains(&from);
            if was_lazy {
                o.lazy.retain(|&c| c != from);
                self.stats.grafts += 1;
                out.push(Push::Control(from, TreeControl::Graft(vec![(sender.clone(), Vec::new())])));
            }
        }
        // An answer to an ask is not pushed to our parent for its origin:
        // the parent is upstream and has it (a copy would make it prune us,
        // and then nobody pushes to us).
        let parent = if asked { self.origins.get(sender).and_then(|o| o.parent) } else { None };
        self.forward(now, sender, frame, id, [Some(from), origin_link, parent], out);
        Verdict::Fresh
    }

    fn on_control(&mut self, now: Now, from: ConnId, control: TreeControl, out: &mut Vec<Push>) {
        if !self.links.contains(&from) {
            return; // not a tree link: a peer that did not negotiate it
        }
        let control_kind = if matches!(control, TreeControl::Graft(_)) { Kind::Graft } else { Kind::Other };
        match control {
            TreeControl::Prune(origins) => {
                for origin in origins {
                    let o = self.origin(&origin, now.mono_ms);
                    if !o.lazy.contains(&from) {
                        o.lazy.push(from);
                    }
                }
            }
            TreeControl::Graft(groups) | TreeControl::Want(groups) => {
                let graft = matches!(control_kind, Kind::Graft);
                for (origin, ids) in groups {
                    if graft {
                        self.make_eager(&origin, from);
                    }
                    for id in ids {
                        if let Some(f) = self.cache.frames.get(&id) {
                            self.stats.served += 1;
                            out.push(Push::Repair(from, f.clone()));
                        } else {
                            self.stats.unserved += 1;
                        }
                    }
                }
            }
            TreeControl::IHave(groups) => {
                for (origin, ids) in groups {
                    for id in ids {
                        if self.seen.contains(&id) {
                            continue;
                        }
                        if self.missing.len() >= MAX_MISSING && !self.missing.contains_key(&id) {
                            self.stats.ignored += 1;
                            continue;
                        }
                        if !self.missing.contains_key(&id) {
                            let o = self.origin(&origin, now.mono_ms);
                            o.announced += 1;
                            let seq = o.announced;
                            let since_ms = now.mono_ms;
                            let m = Missing {
                                origin: origin.clone(),
                                announcers: VecDeque::new(),
                                next: 0,
                                since_ms,
                                seq,
                                wanted: false,
                            };
                            self.missing.insert(id, m);
                        }
                        let Some(m) = self.missing.get_mut(&id) else { continue };
                        let announcers = &mut m.announcers;
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
    }

    fn flush(&mut self, now: Now, out: &mut Vec<Push>) {
        if self.announce_due.is_none_or(|due| due > now.mono_ms) {
            return;
        }
        self.announce_due = None;
        let mut pending: Vec<(ConnId, Vec<(PeerId, MsgId)>)> = self.announce.drain().collect();
        pending.sort_by_key(|(c, _)| *c);
        for (conn, pairs) in pending {
            self.stats.announced += pairs.len() as u64;
            // One message carries at most MAX_IDS_PER_MESSAGE ids in all.
            let mut message = Vec::new();
            let mut ids_in = 0;
            for g in group(pairs) {
                if ids_in + g.1.len() > MAX_IDS_PER_MESSAGE {
                    out.push(Push::Control(conn, TreeControl::IHave(std::mem::take(&mut message))));
                    ids_in = 0;
                }
                ids_in += g.1.len();
                message.push(g);
            }
            if !message.is_empty() {
                out.push(Push::Control(conn, TreeControl::IHave(message)));
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
            self.retry_grafts.front().map(|&(t, _)| t),
            self.announce_due,
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
        self.wanted_answers.expire(now.mono_ms, self.cfg.cache_ms);
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
        while let Some(&(t, id)) = self.retry_grafts.front() {
            if t > now.mono_ms {
                break;
            }
            self.retry_grafts.pop_front();
            self.graft_due(now, id, out);
        }
        self.flush(now, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MsgType;

    const A: ConnId = ConnId(1);
    const B: ConnId = ConnId(2);
    const C: ConnId = ConnId(3);
    const PY: ConnId = ConnId(9);

    fn at(ms: u64) -> Now {
        Now { mono_ms: ms, unix_ms: 1_700_000_000_000 + ms }
    }

    fn x() -> PeerId {
        PeerId::random(b"origin x")
    }

    fn y() -> PeerId {
        PeerId::random(b"origin y")
    }

    fn frame_of(origin: &PeerId, n: u64) -> Frame {
        Frame::build(MsgType::Broadcast, origin, 1_700_000_000, 0u64, &[n.into()])
    }

    fn frame(n: u64) -> Frame {
        frame_of(&x(), n)
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

    fn prune(t: &mut Tree, conn: ConnId, origin: PeerId) {
        t.on_control(at(0), conn, TreeControl::Prune(vec![origin]), &mut Vec::new());
    }

    #[test]
    fn first_copy_goes_eager_to_all_and_a_duplicate_prunes_that_origin_only() {
        let mut t = tree();
        let m = frame(1);
        let out = run(|o| assert_eq!(t.receive(at(0), A, None, &x(), &m, o), Verdict::Fresh));
        assert_eq!(out, vec![Push::Payload(PY, m.clone()), Push::Payload(B, m.clone()), Push::Payload(C, m.clone())]);
        // The same message from B: B's link becomes lazy for x, B is told.
        let out = run(|o| assert_eq!(t.receive(at(1), B, None, &x(), &m, o), Verdict::Duplicate));
        assert_eq!(out, vec![Push::Control(B, TreeControl::Prune(vec![x()]))]);
        // From the py2p link: dropped, nothing said (py2p knows no prunes).
        let out = run(|o| assert_eq!(t.receive(at(2), PY, None, &x(), &m, o), Verdict::Duplicate));
        assert_eq!(out, vec![]);
        // Once lazy, a duplicate from B is not pruned twice.
        let out = run(|o| assert_eq!(t.receive(at(3), B, None, &x(), &m, o), Verdict::Duplicate));
        assert_eq!(out, vec![]);
        assert_eq!(t.lazy_for(&x()), vec![B]);
        assert_eq!(t.stats().prunes, 1);
        // Another origin's tree is untouched: B is eager for y.
        assert_eq!(t.eager_for(&y()), vec![A, B, C]);
        let my = frame_of(&y(), 1);
        let out = run(|o| assert_eq!(t.receive(at(4), A, None, &y(), &my, o), Verdict::Fresh));
        assert_eq!(
            out,
            vec![Push::Payload(PY, my.clone()), Push::Payload(B, my.clone()), Push::Payload(C, my.clone())]
        );
    }

    #[test]
    fn lazy_links_get_announcements_batched_per_interval_and_grouped_by_origin() {
        let mut t = tree();
        prune(&mut t, C, x());
        prune(&mut t, C, y());
        let (m1, m2, m3) = (frame(1), frame_of(&y(), 2), frame(3));
        let out = run(|o| {
            t.receive(at(1), A, None, &x(), &m1, o);
            t.receive(at(1), A, None, &y(), &m2, o);
            t.receive(at(1), A, None, &x(), &m3, o);
        });
        let to_b_and_py = |m: &Frame| [Push::Payload(PY, m.clone()), Push::Payload(B, m.clone())];
        assert_eq!(out, [to_b_and_py(&m1), to_b_and_py(&m2), to_b_and_py(&m3)].concat());
        // Not before the interval (10 ms after the first).
        assert_eq!(run(|o| t.flush(at(10), o)), vec![]);
        assert_eq!(t.poll_timeout(), Some(11));
        let out = run(|o| t.flush(at(11), o));
        let groups = vec![(x(), vec![m1.id(), m3.id()]), (y(), vec![m2.id()])];
        assert_eq!(out, vec![Push::Control(C, TreeControl::IHave(groups))]);
        assert_eq!(run(|o| t.flush(at(12), o)), vec![]);
        // The origin's own link is skipped too; a timeout flushes as well.
        let m4 = frame(4);
        let out = run(|o| {
            t.receive(at(20), A, Some(B), &x(), &m4, o);
            t.handle_timeout(at(30), o);
        });
        assert_eq!(
            out,
            vec![Push::Payload(PY, m4.clone()), Push::Control(C, TreeControl::IHave(vec![(x(), vec![m4.id()])]))]
        );
        assert_eq!(t.stats().announced, 4);
    }

    #[test]
    fn one_announcement_carries_at_most_the_wire_limit_of_ids() {
        let mut t = tree();
        prune(&mut t, C, x());
        let frames: Vec<Frame> = (0..MAX_IDS_PER_MESSAGE as u64 + 5).map(frame).collect();
        let out = run(|o| {
            for m in &frames {
                t.receive(at(1), A, None, &x(), m, o);
            }
            o.clear();
            t.flush(at(11), o);
        });
        let sizes: Vec<usize> = out
            .iter()
            .map(|p| match p {
                Push::Control(C, TreeControl::IHave(g)) => g.iter().map(|(_, ids)| ids.len()).sum(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sizes, vec![MAX_IDS_PER_MESSAGE, 5]);
    }

    /// What a node asks for (grafts, wants), leaving out its announcements.
    fn asks(out: Vec<Push>) -> Vec<Push> {
        out.into_iter().filter(|p| !matches!(p, Push::Control(_, TreeControl::IHave(_)))).collect()
    }

    fn ihave(origin: PeerId, id: MsgId) -> TreeControl {
        TreeControl::IHave(vec![(origin, vec![id])])
    }

    fn graft(origin: PeerId, id: MsgId) -> TreeControl {
        TreeControl::Graft(vec![(origin, vec![id])])
    }

    fn want(origin: PeerId, id: MsgId) -> TreeControl {
        TreeControl::Want(vec![(origin, vec![id])])
    }

    #[test]
    fn a_missing_message_of_a_silent_origin_is_grafted_then_asked_of_the_next_announcer() {
        let mut t = tree();
        let m = frame(1);
        let id = m.id();
        prune(&mut t, A, x());
        prune(&mut t, B, x());
        assert_eq!(run(|o| t.on_control(at(10), A, ihave(x(), id), o)), vec![]);
        assert_eq!(run(|o| t.on_control(at(20), B, ihave(x(), id), o)), vec![]);
        assert_eq!(t.poll_timeout(), Some(90));
        // Early: nothing.
        assert_eq!(run(|o| t.handle_timeout(at(89), o)), vec![]);
        // Nothing of x ever came: the first announcer is grafted (and
        // becomes eager for x).
        assert_eq!(run(|o| t.handle_timeout(at(90), o)), vec![Push::Control(A, graft(x(), id))]);
        assert!(t.eager_for(&x()).contains(&A));
        assert_eq!(t.poll_timeout(), Some(130));
        // A does not deliver in time: the next announcer is asked (one graft
        // per origin per graft timeout: B stays lazy).
        assert_eq!(run(|o| t.handle_timeout(at(130), o)), vec![Push::Control(B, want(x(), id))]);
        assert_eq!(t.lazy_for(&x()), vec![B]);
        // B delivers: fresh; nothing more is asked.
        let out = run(|o| assert_eq!(t.receive(at(140), B, None, &x(), &m, o), Verdict::Fresh));
        assert!(out.iter().all(|p| matches!(p, Push::Payload(..))), "{out:?}");
        assert_eq!(run(|o| t.handle_timeout(at(2_000), o)), vec![]);
        assert_eq!((t.stats().grafts, t.stats().wants), (1, 1));
    }

    #[test]
    fn a_hole_in_a_flowing_stream_is_asked_for_and_the_tree_kept() {
        let mut t = tree();
        prune(&mut t, B, x());
        prune(&mut t, C, x());
        let (m1, m2) = (frame(1), frame(2));
        t.receive(at(0), A, None, &x(), &frame(0), &mut Vec::new());
        t.on_control(at(10), B, ihave(x(), m1.id()), &mut Vec::new());
        t.on_control(at(11), B, ihave(x(), m2.id()), &mut Vec::new());
        // The parent A delivers m2, announced after m1: m1 was lost on the
        // way (an origin's messages keep their order along a path).
        t.receive(at(12), A, None, &x(), &m2, &mut Vec::new());
        assert_eq!(asks(run(|o| t.handle_timeout(at(90), o))), vec![Push::Control(B, want(x(), m1.id()))]);
        assert_eq!(t.eager_for(&x()), vec![A], "the tree is unchanged");
        assert_eq!(t.stats().grafts, 0);
    }

    #[test]
    fn a_busy_stream_puts_the_graft_off_until_its_patience_runs_out() {
        let mut t = tree();
        prune(&mut t, B, x());
        prune(&mut t, C, x());
        let m = frame(1);
        t.on_control(at(0), B, ihave(x(), m.id()), &mut Vec::new());
        // x's messages keep coming from A (announced before m or never).
        for k in 0..10 {
            t.receive(at(k * 100), A, None, &x(), &frame(100 + k), &mut Vec::new());
            assert_eq!(asks(run(|o| t.handle_timeout(at(k * 100 + 90), o))), vec![], "at {}", k * 100 + 90);
        }
        // Checked every graft timeout (80 ms); once 80 ms + the 1 s
        // patience have passed since the announcement: re-parent.
        assert_eq!(asks(run(|o| t.handle_timeout(at(1_070), o))), vec![]);
        assert_eq!(asks(run(|o| t.handle_timeout(at(1_150), o))), vec![Push::Control(B, graft(x(), m.id()))]);
        assert!(t.stats().postponed >= 11, "{:?}", t.stats());
    }

    #[test]
    fn losing_the_parent_link_grafts_at_the_deadline_however_recent_its_last_message() {
        let mut t = tree();
        prune(&mut t, B, x());
        prune(&mut t, C, x());
        t.receive(at(0), A, None, &x(), &frame(0), &mut Vec::new());
        let m = frame(1);
        t.on_control(at(5), B, ihave(x(), m.id()), &mut Vec::new());
        t.link_down(A);
        assert_eq!(asks(run(|o| t.handle_timeout(at(85), o))), vec![Push::Control(B, graft(x(), m.id()))]);
        assert_eq!(t.eager_for(&x()), vec![B]);
    }

    #[test]
    fn a_faster_lazy_path_becomes_the_parent_for_a_sparse_origin() {
        // A is x's parent; B is lazy. Messages come seconds apart and B
        // announces the next one 80 ms before A delivers it: we graft B,
        // A's late copy is a duplicate, A is pruned. The tree moved to the
        // faster path.
        let mut t = tree();
        prune(&mut t, B, x());
        prune(&mut t, C, x());
        t.receive(at(0), A, None, &x(), &frame(0), &mut Vec::new());
        let m = frame(1);
        t.on_control(at(5_000), B, ihave(x(), m.id()), &mut Vec::new());
        assert_eq!(asks(run(|o| t.handle_timeout(at(5_080), o))), vec![Push::Control(B, graft(x(), m.id()))]);
        assert_eq!(t.receive(at(5_085), B, None, &x(), &m, &mut Vec::new()), Verdict::Fresh);
        let out = run(|o| assert_eq!(t.receive(at(5_090), A, None, &x(), &m, o), Verdict::Duplicate));
        assert_eq!(out, vec![Push::Control(A, TreeControl::Prune(vec![x()]))]);
        assert_eq!(t.eager_for(&x()), vec![B]);
        // From now on B pushes: its copy is fresh, and nothing is asked.
        assert_eq!(t.receive(at(9_000), B, None, &x(), &frame(2), &mut Vec::new()), Verdict::Fresh);
        assert_eq!(asks(run(|o| t.handle_timeout(at(9_100), o))), vec![]);
    }

    #[test]
    fn an_announcement_of_a_message_we_have_is_ignored_and_arrival_cancels_the_graft() {
        let mut t = tree();
        let m = frame(1);
        t.receive(at(0), A, None, &x(), &m, &mut Vec::new());
        let ihave = |id| TreeControl::IHave(vec![(x(), vec![id])]);
        assert_eq!(run(|o| t.on_control(at(1), B, ihave(m.id()), o)), vec![]);
        let m2 = frame(2);
        t.on_control(at(2), B, ihave(m2.id()), &mut Vec::new());
        t.receive(at(50), A, None, &x(), &m2, &mut Vec::new());
        assert_eq!(run(|o| t.handle_timeout(at(100), o)), vec![]);
        assert_eq!(t.stats().grafts, 0);
    }

    #[test]
    fn a_graft_is_answered_from_the_cache_and_makes_the_link_eager_for_that_origin() {
        let mut t = tree();
        let me = PeerId::random(b"me");
        let m = frame_of(&me, 1);
        // C is lazy for our broadcasts: m is announced to it, and cached.
        prune(&mut t, C, me.clone());
        prune(&mut t, C, y());
        t.publish(at(0), &me, &m, &mut Vec::new());
        let z = PeerId::random(b"origin z");
        let unannounced = frame_of(&z, 7);
        t.receive(at(1), A, None, &z, &unannounced, &mut Vec::new());
        assert_eq!(t.lazy_for(&me), vec![C]);
        let unknown = frame(99).id();
        let out = run(|o| t.on_control(at(2), C, TreeControl::Graft(vec![(me.clone(), vec![m.id(), unknown])]), o));
        assert_eq!(out, vec![Push::Repair(C, m.clone())]);
        assert!(t.eager_for(&me).contains(&C));
        // A message announced to nobody (every link is eager for z) was not
        // cached: nobody can ask for it.
        assert!(!t.cache.frames.contains_key(&unannounced.id()));
        assert_eq!(t.lazy_for(&y()), vec![C], "a graft for one origin leaves the others");
        // Forgotten after the cache time: a late graft gets nothing.
        t.handle_timeout(at(31_000), &mut Vec::new());
        let out = run(|o| t.on_control(at(31_001), C, TreeControl::Graft(vec![(me.clone(), vec![m.id()])]), o));
        assert_eq!(out, vec![]);
        assert_eq!(t.stats().unserved, 1 + 1);
        // A want is answered the same way, without touching the tree.
        let m2 = frame_of(&me, 2);
        prune(&mut t, B, me.clone());
        t.publish(at(31_002), &me, &m2, &mut Vec::new());
        let out = run(|o| t.on_control(at(31_003), B, TreeControl::Want(vec![(me.clone(), vec![m2.id()])]), o));
        assert_eq!(out, vec![Push::Repair(B, m2.clone())]);
        assert!(t.lazy_for(&me).contains(&B));
    }

    #[test]
    fn the_tree_repairs_when_the_eager_parent_goes() {
        // A was our parent for x; B and C are lazy. A's link dies; the next
        // message is announced by B: we graft B, which becomes our parent.
        let mut t = tree();
        prune(&mut t, B, x());
        prune(&mut t, C, x());
        t.link_down(A);
        let m = frame(5);
        t.on_control(at(10), B, TreeControl::IHave(vec![(x(), vec![m.id()])]), &mut Vec::new());
        let out = run(|o| t.handle_timeout(at(90), o));
        assert_eq!(out, vec![Push::Control(B, TreeControl::Graft(vec![(x(), vec![m.id()])]))]);
        assert_eq!(t.receive(at(95), B, None, &x(), &m, &mut Vec::new()), Verdict::Fresh);
        assert_eq!(t.eager_for(&x()), vec![B]);
    }

    #[test]
    fn control_from_a_link_without_the_tree_is_ignored_and_state_is_bounded() {
        let mut t = tree();
        let m = frame(1);
        let ihave = TreeControl::IHave(vec![(x(), vec![m.id()])]);
        assert_eq!(run(|o| t.on_control(at(0), PY, ihave, o)), vec![]);
        assert_eq!(t.poll_timeout(), None);
        let mut small = Tree::new(TreeConfig { cache_bytes: 300, ..TreeConfig::default() }, 60_000, 1024, 7);
        small.link_up(A, true);
        prune(&mut small, A, x());
        for n in 0..10 {
            small.publish(at(n), &x(), &frame(n), &mut Vec::new());
        }
        assert!(small.cache.bytes <= 300 && !small.cache.frames.is_empty() && small.cache.frames.len() < 10);
        // Origins past the bound forget the least recently active.
        for n in 0..MAX_ORIGINS as u64 + 1 {
            let origin = PeerId::random(&n.to_le_bytes());
            t.on_control(at(n), A, TreeControl::Prune(vec![origin]), &mut Vec::new());
        }
        assert_eq!(t.origins.len(), MAX_ORIGINS);
        assert!(t.lazy_for(&PeerId::random(&0u64.to_le_bytes())).is_empty());
        assert_eq!(t.lazy_for(&PeerId::random(&1u64.to_le_bytes())), vec![A]);
    }
}
