//! The py2p sync protocol (a dictionary replicated over the mesh), as a
//! state machine, with convergence that py2p lacks.
//!
//! # Wire compatibility with py2p's `SyncSocket`
//! - A write is a *store* broadcast `[0, id, t, 0x0B, key, value]`: owner =
//!   sender, timestamp = `t`. A nil value deletes.
//! - On every new connection a py2p node whispers one store per key,
//!   `[2, id, t, 0x0B, key, value, owner, timestamp]`, applied only where
//!   the receiver holds no truthy value. rs2p sends the same to py2p peers.
//! - A *delta* broadcast `[0, id, t, 0x11, key, {field: value}]` merges the
//!   map into the map at `key`.
//! - py2p's lease rule: a write at a key held by another owner is refused
//!   for an hour after that owner's last write, unless leasing is off. The
//!   two kinds of network use different subnets (`sync1` / `sync0`).
//!
//! # What rs2p adds (between rs2p nodes)
//! py2p peers ignore all of this: extra trailing fields are not looked at
//! by py2p's handlers, and sub-flags `0x20`/`0x21` fall through to "unknown".
//! - **A total order for writes.** rs2p stores and deltas carry one extra
//!   field, `[ts_ms]`: a millisecond hybrid-clock timestamp (never behind a
//!   version the writer had seen for the key). Versions compare by
//!   timestamp, then by owner (smaller wins, py2p's tie rule), then by value
//!   bytes ([`entry::write_order`]); every replica keeps the greatest.
//! - **Tombstones.** A delete is kept as a nil value with its version, so an
//!   older write cannot resurrect the key; tombstones are purged after
//!   [`Config::tombstone_ttl_ms`] (default 24 h; the purge runs every
//!   sixteenth of it, at most every minute). A replica cut off for
//!   longer than that may bring back a value deleted meanwhile.
//! - **Per-field deltas.** Each field a delta sets keeps its own version;
//!   a later set of the whole value supersedes older fields. Merging is
//!   commutative, so deltas from concurrent writers all survive.
//! - **Anti-entropy** (`0x20` digest, `0x21` entries, whispers between rs2p
//!   peers only). Keys hash into 65,536 leaf buckets, 256 at the top level;
//!   each bucket's digest is the XOR of its entries' digests. On every new
//!   connection to an rs2p peer, and every
//!   [`Config::anti_entropy_interval_ms`] with a random rs2p peer, a node
//!   sends its 256 top digests (2 KiB); the receiver answers each differing
//!   top bucket with its 256 leaf digests; the first node then sends the
//!   entries of the differing leaves. Each side does the same, so both end
//!   with the union. A joining node receives the whole state this way, once:
//!   while a peer's entries keep arriving (within one interval), no new
//!   round with that peer is started or answered, since it would resend
//!   what is still in flight.
//!
//! # Consistency model
//! Between rs2p replicas: strong eventual consistency. Every write accepted
//! anywhere reaches every connected rs2p replica (flooding, plus
//! anti-entropy for whatever a replica missed while cut off), and replicas
//! that received the same writes hold the same dictionary whatever the
//! order. A write acknowledged by [`Replica::set`] is in the local replica at
//! once and is not lost while that replica, or any other that received it,
//! stays in the network. Reads are local: they may lag other replicas.
//! Leases are checked locally when a write is made: during a partition two
//! nodes can both take a free key; after the heal the version order picks
//! one winner everywhere.
//!
//! py2p replicas keep py2p's rules: they see rs2p writes as second-resolution
//! stores, apply py2p's lease check, forget deletes, and are repaired only by
//! the per-key state transfer on new connections. They can therefore
//! disagree with the rs2p replicas after concurrent writes or partitions.
//! rs2p applies py2p's lease rule to writes that come from py2p nodes.

pub mod entry;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::seq::IteratorRandom;
use rand::SeedableRng;
use rmpv::Value;
use sha2::{Digest, Sha256};

pub use entry::{Entry, Field, Version};

use crate::id::PeerId;
use crate::mesh::ConnId;
use crate::wire::{subflag, Frame, MsgType, Packet};
use crate::Now;

/// rs2p sub-flag: anti-entropy digest (whisper, rs2p peers only).
pub const SUBFLAG_DIGEST: u64 = 0x20;
/// rs2p sub-flag: anti-entropy entries (whisper, rs2p peers only).
pub const SUBFLAG_ENTRIES: u64 = 0x21;

/// py2p's lease: one hour after the holder's last write.
pub const LEASE_MS: u64 = 3_600_000;

/// Most distinct owner ids a replica shares among its entries; owners past
/// it get a copy each (so a flood of made-up ids cannot grow the table).
const MAX_INTERNED_OWNERS: usize = 4096;
const TOP_BUCKETS: usize = 256;
const LEAF_BUCKETS: usize = 65_536;
const DIGEST_BYTES: usize = TOP_BUCKETS * 8;

/// Settings of a replica.
#[derive(Debug, Clone)]
pub struct Config {
    /// py2p leasing (default on): a key written by one node cannot be
    /// written by another for [`Config::lease_ms`] after its last write.
    pub leasing: bool,
    /// The lease duration. Default [`LEASE_MS`].
    pub lease_ms: u64,
    /// How long deletes are remembered. Default 24 h.
    pub tombstone_ttl_ms: u64,
    /// Interval between anti-entropy rounds with a random rs2p peer.
    /// Default 2 s.
    pub anti_entropy_interval_ms: u64,
    /// Largest anti-entropy entries message, in encoded bytes (about).
    /// Default 256 KiB.
    pub max_batch_bytes: usize,
    /// Largest frame body a local write may produce (peers close links that
    /// send more than their limit). Default
    /// [`crate::wire::DEFAULT_MAX_FRAME_LEN`]; the driver sets it to its own
    /// frame limit.
    pub max_frame_len: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            leasing: true,
            lease_ms: LEASE_MS,
            tombstone_ttl_ms: 24 * 3_600_000,
            anti_entropy_interval_ms: 2_000,
            max_batch_bytes: 256 * 1024,
            max_frame_len: crate::wire::DEFAULT_MAX_FRAME_LEN,
        }
    }
}

/// A change to the local replica.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `key` now holds `value`, last written by `owner` at `timestamp`
    /// (UNIX seconds).
    Update {
        /// The key.
        key: Bytes,
        /// Its new value.
        value: Value,
        /// The writer of the newest part of the value.
        owner: PeerId,
        /// When, in UNIX seconds.
        timestamp: u64,
    },
    /// `key` was deleted.
    Delete {
        /// The key.
        key: Bytes,
    },
}

/// Why a local write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Another node holds the key's lease.
    #[error("key is leased to {owner} until UNIX time {until}")]
    Leased {
        /// The lease holder.
        owner: PeerId,
        /// When the lease ends, in UNIX seconds.
        until: u64,
    },
    /// The key holds no value.
    #[error("no such key")]
    NotFound,
    /// A delta was applied to a key whose value is not a map.
    #[error("cannot apply a delta to a value that is not a map")]
    NotAMap,
    /// The write would make a frame larger than the frame limit; nothing
    /// was applied.
    #[error("write of {len} bytes exceeds the frame limit of {max}")]
    TooLarge {
        /// The frame body's size.
        len: usize,
        /// The limit ([`Config::max_frame_len`]).
        max: usize,
    },
}

/// What the replica asks of the mesh below it.
#[derive(Debug, Clone)]
pub enum Action {
    /// Flood this frame.
    Broadcast(Frame),
    /// Send this frame to one connection.
    Send(ConnId, Frame),
    /// Tell the application.
    Event(Event),
}

#[derive(Debug, Clone)]
struct Slot {
    entry: Entry,
    digest: u64,
    /// The key's leaf bucket (see [`bucket`]), kept to spare a sha256.
    leaf: u16,
}

/// One node's replica of the dictionary. See the [module docs](self).
#[derive(Debug)]
pub struct Replica {
    me: PeerId,
    cfg: Config,
    /// Keys are remote input: hashed with a keyed hash seeded per replica
    /// (random in a real node, fixed in a simulation, which keeps its runs
    /// reproducible).
    ///
    /// Slots are boxed so the table itself stays narrow (40 bytes a
    /// bucket): growing it moves little, and its empty buckets cost little.
    entries: HashMap<Bytes, Box<Slot>, foldhash::quality::FixedState>,
    leaf: Vec<u64>,
    top: Vec<u64>,
    live: usize,
    /// Connected peers and whether each is rs2p.
    peers: BTreeMap<ConnId, bool>,
    /// When each peer last sent us anti-entropy entries (monotonic ms): a
    /// transfer from it is under way, so no new round with it is started or
    /// answered (it would resend what is still in flight).
    receiving_from: BTreeMap<ConnId, u64>,
    next_purge_ms: u64,
    next_ae_ms: u64,
    clock_ms: u64,
    rng: StdRng,
    out: VecDeque<Action>,
    /// Owner ids shared by the entries: an entry must not hold a slice of
    /// the frame it came in (that would pin the whole read buffer), and a
    /// copy per entry would cost ~100 bytes per key.
    owners: HashSet<PeerId, foldhash::quality::FixedState>,
    /// Whether changes produce [`Action::Event`]s.
    report_changes: bool,
}

/// The event for a change of `entry` (at `key`), which held a value before
/// if `had`, namely `before` (when known).
fn change_event(entry: &Entry, had: bool, before: Option<Value>, key: &Bytes) -> Option<Event> {
    match entry.value() {
        None => had.then(|| Event::Delete { key: key.clone() }),
        Some(v) if before.as_ref() != Some(&v) => {
            let latest = entry.latest();
            Some(Event::Update { key: key.clone(), value: v, owner: latest.owner.clone(), timestamp: latest.secs() })
        }
        Some(_) => None,
    }
}

/// The leaf bucket of a key: the first two bytes of its sha256.
pub fn bucket(key: &[u8]) -> u16 {
    let h = Sha256::digest(key);
    u16::from_be_bytes([h[0], h[1]])
}

pub(crate) fn key_bytes(v: &Value) -> Option<Bytes> {
    match v {
        Value::Binary(b) => Some(Bytes::copy_from_slice(b)),
        Value::String(s) => Some(Bytes::copy_from_slice(s.as_bytes())),
        _ => None,
    }
}

pub(crate) fn owner_of(v: &Value) -> Option<PeerId> {
    let b = key_bytes(v)?;
    (!b.is_empty() && b.len() <= crate::id::MAX_ID_LEN).then(|| PeerId::from_bytes(b))
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Nil => false,
        Value::Boolean(b) => *b,
        Value::Integer(i) => i.as_i64() != Some(0) && i.as_u64() != Some(0),
        Value::F32(f) => *f != 0.0,
        Value::F64(f) => *f != 0.0,
        Value::String(s) => !s.as_bytes().is_empty(),
        Value::Binary(b) => !b.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Map(m) => !m.is_empty(),
        Value::Ext(..) => true,
    }
}

impl Replica {
    /// A replica for node `me`; `seed` seeds its choice of peers.
    pub fn new(me: PeerId, cfg: Config, seed: u64) -> Self {
        Replica {
            me,
            cfg,
            entries: HashMap::with_hasher(foldhash::quality::FixedState::with_seed(seed ^ 0x6b65_7973)),
            leaf: vec![0; LEAF_BUCKETS],
            top: vec![0; TOP_BUCKETS],
            live: 0,
            peers: BTreeMap::new(),
            next_ae_ms: 0,
            receiving_from: BTreeMap::new(),
            next_purge_ms: 0,
            clock_ms: 0,
            rng: StdRng::seed_from_u64(seed),
            out: VecDeque::new(),
            owners: HashSet::with_hasher(foldhash::quality::FixedState::with_seed(seed ^ 0x6f77_6e72)),
            report_changes: true,
        }
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The next action for the mesh. Drain after every input.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    // ----- reads ------------------------------------------------------------

    fn slot(&self, key: &[u8]) -> Option<&Slot> {
        self.entries.get(key).map(|s| &**s)
    }

    /// The value at `key`.
    pub fn get(&self, key: &[u8]) -> Option<Value> {
        self.slot(key).and_then(|s| s.entry.value())
    }

    /// The owner and timestamp (UNIX seconds) of the value at `key`.
    pub fn meta(&self, key: &[u8]) -> Option<(PeerId, u64)> {
        let s = self.slot(key)?;
        (!s.entry.is_tombstone()).then(|| {
            let v = s.entry.latest();
            (v.owner.clone(), v.secs())
        })
    }

    /// The full replicated entry at `key`, tombstones included.
    pub fn entry(&self, key: &[u8]) -> Option<&Entry> {
        self.slot(key).map(|s| &s.entry)
    }

    /// Number of keys holding a value.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether no key holds a value.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Every key holding a value, with its value and latest version.
    pub fn items(&self) -> impl Iterator<Item = (&Bytes, Value, &Version)> + '_ {
        self.entries.iter().filter_map(|(k, s)| Some((k, s.entry.value()?, s.entry.latest())))
    }

    /// A digest of the whole replica (tombstones included): two replicas
    /// with equal digests hold the same state.
    pub fn state_digest(&self) -> u64 {
        self.top.iter().fold(0u64, |acc, &d| acc.rotate_left(5) ^ d)
    }

    // ----- local writes -----------------------------------------------------

    /// The lease holder blocking a write by us to `entry`, if any.
    fn lease_error(&self, now: Now, entry: &Entry) -> Option<WriteError> {
        if !self.cfg.leasing || entry.is_tombstone() {
            return None;
        }
        let v = entry.latest();
        let until = v.ts_ms.saturating_add(self.cfg.lease_ms);
        (v.owner != self.me && until > now.unix_ms)
            .then(|| WriteError::Leased { owner: v.owner.clone(), until: until / 1000 })
    }

    /// Checks a local write (lease, delta target, frame size) and stamps it
    /// with a version, from one lookup of the key. Returns the version and
    /// the frame to flood; nothing is changed on refusal.
    fn prepare_write(
        &mut self,
        now: Now,
        key: &Bytes,
        subflag: u64,
        payload: Value,
    ) -> Result<(Version, Frame), WriteError> {
        let current = self.entries.get(key).map(|s| &s.entry);
        if let Some(e) = current {
            if subflag == subflag::DELTA && matches!(e.value(), Some(v) if !v.is_map()) {
                return Err(WriteError::NotAMap);
            }
            if let Some(err) = self.lease_error(now, e) {
                return Err(err);
            }
        }
        // The hybrid clock: never behind what this replica has seen, nor
        // behind the key's own newest version.
        let floor = current.map(|e| e.latest().ts_ms + 1).unwrap_or(0);
        let ts = now.unix_ms.max(self.clock_ms + 1).max(floor);
        let version = Version::new(ts, self.me.clone());
        let frame = Frame::build(
            MsgType::Broadcast as u8,
            &self.me,
            version.secs(),
            subflag,
            &[Value::Binary(key.to_vec()), payload, Value::Array(vec![Value::from(ts)])],
        );
        // Peers close links that send frames above their limit: refuse
        // before anything is applied.
        let len = frame.body().len();
        if len > self.cfg.max_frame_len {
            return Err(WriteError::TooLarge { len, max: self.cfg.max_frame_len });
        }
        self.clock_ms = ts;
        Ok((version, frame))
    }

    /// Sets `key` to `value` (nil deletes, as in py2p) and floods the write.
    ///
    /// # Errors
    /// [`WriteError::Leased`] when another node holds the key's lease,
    /// [`WriteError::TooLarge`] above the frame limit.
    pub fn set(&mut self, now: Now, key: Bytes, value: Value) -> Result<(), WriteError> {
        let (version, frame) = self.prepare_write(now, &key, subflag::STORE, value.clone())?;
        self.apply(key, |e| e.apply_set(&version, &value), Some((&version, &value)));
        self.out.push_back(Action::Broadcast(frame));
        Ok(())
    }

    /// Deletes `key`.
    ///
    /// # Errors
    /// [`WriteError::NotFound`] if it holds no value, [`WriteError::Leased`].
    pub fn delete(&mut self, now: Now, key: Bytes) -> Result<(), WriteError> {
        if self.get(&key).is_none() {
            return Err(WriteError::NotFound);
        }
        self.set(now, key, Value::Nil)
    }

    /// Merges `delta` into the map at `key` (creating it) and floods it.
    ///
    /// # Errors
    /// [`WriteError::NotAMap`] if `key` holds something else,
    /// [`WriteError::Leased`], [`WriteError::TooLarge`].
    pub fn apply_delta(&mut self, now: Now, key: Bytes, delta: Vec<(Value, Value)>) -> Result<(), WriteError> {
        let (version, frame) = self.prepare_write(now, &key, subflag::DELTA, Value::Map(delta.clone()))?;
        self.apply(key, |e| e.apply_delta(&version, &delta), None);
        self.out.push_back(Action::Broadcast(frame));
        Ok(())
    }

    // ----- state changes ----------------------------------------------------

    /// Runs `change` on the entry at `key` (creating it from `create` when
    /// absent) and keeps digests, counts and events in step.
    fn apply(&mut self, key: Bytes, change: impl FnOnce(&mut Entry) -> bool, create: Option<(&Version, &Value)>) {
        // Values are cloned for events only when someone wants them.
        let report = self.report_changes;
        // What changed is read while the entry is borrowed (no entry clone).
        let (had, has, event) = if let Some(slot) = self.entries.get_mut(&key) {
            let had = !slot.entry.is_tombstone();
            let before = if report { slot.entry.value() } else { None };
            let old_digest = slot.digest;
            if !change(&mut slot.entry) {
                return;
            }
            slot.digest = slot.entry.digest(&key);
            let delta = old_digest ^ slot.digest;
            let leaf = usize::from(slot.leaf);
            self.leaf[leaf] ^= delta;
            self.top[leaf >> 8] ^= delta;
            let event = report.then(|| change_event(&slot.entry, had, before, &key)).flatten();
            (had, !slot.entry.is_tombstone(), event)
        } else {
            // Start from the oldest possible entry so `change` decides.
            let mut entry = match create {
                Some((v, val)) => Entry::new(v.clone(), val.clone()),
                None => Entry::new(Version::new(0, PeerId::from_bytes(Bytes::new())), Value::Nil),
            };
            if create.is_none() && !change(&mut entry) {
                return;
            }
            let digest = entry.digest(&key);
            let leaf = bucket(&key);
            self.leaf[usize::from(leaf)] ^= digest;
            self.top[usize::from(leaf) >> 8] ^= digest;
            let event = report.then(|| change_event(&entry, false, None, &key)).flatten();
            let has = !entry.is_tombstone();
            self.entries.insert(key, Box::new(Slot { entry, digest, leaf }));
            (false, has, event)
        };
        match (had, has) {
            (true, false) => self.live -= 1,
            (false, true) => self.live += 1,
            _ => {}
        }
        if let Some(e) = event {
            self.out.push_back(Action::Event(e));
        }
    }

    /// Whether [`Action::Event`]s are produced (on by default). A driver
    /// whose application does not listen turns them off, which spares a
    /// copy of every changed value.
    pub fn set_report_changes(&mut self, on: bool) {
        self.report_changes = on;
    }

    /// py2p's `__check_lease` for a write that came from a py2p node.
    fn py2p_accepts(&self, now: Now, key: &[u8], owner: &PeerId, ts_secs: u64, delta: bool) -> bool {
        let Some(s) = self.slot(key).filter(|s| !s.entry.is_tombstone()) else {
            return true;
        };
        let meta = s.entry.latest();
        let (m_owner, m_ts) = (meta.owner.as_bytes(), meta.secs());
        m_owner == owner.as_bytes()
            || (delta && !self.cfg.leasing)
            || m_ts.saturating_add(self.cfg.lease_ms / 1000) < now.unix()
            || (m_ts == ts_secs && m_owner > owner.as_bytes())
            || (m_ts < ts_secs && !self.cfg.leasing)
    }

    // ----- inputs -----------------------------------------------------------

    /// A peer completed its handshake: rs2p peers get a digest, py2p peers
    /// py2p's per-key state transfer.
    pub fn on_peer_up(&mut self, now: Now, conn: ConnId, rs2p: bool) {
        self.peers.insert(conn, rs2p);
        if rs2p {
            self.send_top_digest(conn);
        } else {
            let frames: Vec<Frame> = self
                .items()
                .map(|(k, v, ver)| {
                    Frame::build(
                        MsgType::Whisper as u8,
                        &self.me,
                        now.unix(),
                        subflag::STORE,
                        &[
                            Value::Binary(k.to_vec()),
                            v,
                            Value::Binary(ver.owner.as_bytes().to_vec()),
                            Value::from(ver.secs()),
                        ],
                    )
                })
                .collect();
            for f in frames {
                self.out.push_back(Action::Send(conn, f));
            }
        }
    }

    /// A peer's connection closed.
    pub fn on_peer_down(&mut self, conn: ConnId) {
        self.peers.remove(&conn);
        self.receiving_from.remove(&conn);
    }

    /// Whether entries from `conn` arrived within the last anti-entropy
    /// interval.
    fn transfer_under_way(&self, now: Now, conn: ConnId) -> bool {
        self.receiving_from.get(&conn).is_some_and(|&t| now.mono_ms < t + self.cfg.anti_entropy_interval_ms)
    }

    /// Periodic work: tombstone purge, anti-entropy rounds.
    pub fn handle_tick(&mut self, now: Now) {
        if now.mono_ms >= self.next_purge_ms {
            // A scan of every entry: not on every tick. Tombstones live for
            // their TTL plus at most a sixteenth of it (and a minute).
            self.next_purge_ms = now.mono_ms + (self.cfg.tombstone_ttl_ms / 16).min(60_000);
            self.purge(now);
        }
        if now.mono_ms < self.next_ae_ms {
            return;
        }
        self.next_ae_ms = now.mono_ms + self.cfg.anti_entropy_interval_ms;
        let idle: Vec<ConnId> =
            self.peers.iter().filter(|&(&c, &r)| r && !self.transfer_under_way(now, c)).map(|(c, _)| *c).collect();
        let pick = idle.into_iter().choose(&mut self.rng);
        if let Some(conn) = pick {
            self.send_top_digest(conn);
        }
    }

    fn purge(&mut self, now: Now) {
        if self.entries.len() == self.live {
            return; // no tombstones
        }
        let cutoff = now.unix_ms.saturating_sub(self.cfg.tombstone_ttl_ms);
        let dead: Vec<Bytes> = self
            .entries
            .iter()
            .filter(|(_, s)| s.entry.is_tombstone() && s.entry.base_version.ts_ms < cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        for k in dead {
            if let Some(s) = self.entries.remove(&k) {
                let leaf = usize::from(s.leaf);
                self.leaf[leaf] ^= s.digest;
                self.top[leaf >> 8] ^= s.digest;
            }
        }
    }

    /// A sync message (store, delta, digest, entries) delivered by the mesh
    /// on `conn`. Malformed messages are ignored, as py2p does.
    pub fn handle(&mut self, now: Now, conn: ConnId, packet: &Packet) {
        let h = &packet.header;
        let Ok(v) = packet.values() else { return };
        match (h.subflag, h.msg_type) {
            (subflag::STORE, 0) => self.on_store(now, &h.sender, h.time, &v),
            (subflag::STORE, 2) => self.on_state_transfer(now, &v),
            (subflag::DELTA, 0) => self.on_delta(now, &h.sender, h.time, &v),
            (SUBFLAG_DIGEST, 2) => self.on_digest(now, conn, &v),
            (SUBFLAG_ENTRIES, 2) => {
                self.receiving_from.insert(conn, now.mono_ms);
                self.on_entries(now, &v);
            }
            _ => {}
        }
    }

    /// The version of a broadcast write: the rs2p extension `[ts_ms]` when
    /// present; otherwise a py2p write, which must pass py2p's lease rule
    /// (`None`: refused) and gets second resolution. Either way the hybrid
    /// clock observes it.
    fn write_version(
        &mut self,
        now: Now,
        key: &[u8],
        sender: &PeerId,
        time: u64,
        ext: Option<&Value>,
        delta: bool,
    ) -> Option<Version> {
        let rs2p = ext.and_then(|e| e.as_array()?.first()?.as_u64());
        let version = match rs2p {
            Some(ts_ms) => Version::new(ts_ms, self.intern(sender)),
            None if self.py2p_accepts(now, key, sender, time, delta) => {
                Version::new(time.saturating_mul(1000), self.intern(sender))
            }
            None => return None,
        };
        self.observe(&version);
        Some(version)
    }

    /// The shared copy of an owner id (see `owners`).
    fn intern(&mut self, id: &PeerId) -> PeerId {
        if let Some(shared) = self.owners.get(id) {
            return shared.clone();
        }
        let own = PeerId::from_bytes(Bytes::copy_from_slice(id.as_bytes()));
        if self.owners.len() < MAX_INTERNED_OWNERS {
            self.owners.insert(own.clone());
        }
        own
    }

    /// Interns every owner in an entry that came from the network.
    fn intern_entry(&mut self, e: &mut Entry) {
        e.base_version.owner = self.intern(&e.base_version.owner);
        for f in &mut e.fields {
            f.version.owner = self.intern(&f.version.owner);
        }
    }

    fn observe(&mut self, v: &Version) {
        // The hybrid clock never falls behind what it has seen (bounded, so
        // one bogus future stamp cannot stall local writes for long).
        self.clock_ms = self.clock_ms.max(v.ts_ms.min(self.clock_ms.max(1) + 3_600_000));
    }

    fn on_store(&mut self, now: Now, sender: &PeerId, time: u64, v: &[Value]) {
        if v.len() < 2 {
            return;
        }
        let Some(key) = key_bytes(&v[0]) else { return };
        let Some(version) = self.write_version(now, &key, sender, time, v.get(2), false) else { return };
        let value = &v[1];
        self.apply(key, |e| e.apply_set(&version, value), Some((&version, value)));
    }

    fn on_state_transfer(&mut self, now: Now, v: &[Value]) {
        if v.len() != 4 {
            return;
        }
        let (Some(key), Some(owner), Some(ts)) = (key_bytes(&v[0]), owner_of(&v[2]), v[3].as_u64()) else {
            return;
        };
        // py2p applies a transferred key only where it holds nothing truthy.
        if self.get(&key).is_some_and(|cur| truthy(&cur)) {
            return;
        }
        if !self.py2p_accepts(now, &key, &owner, ts, false) {
            return;
        }
        let version = Version::new(ts.saturating_mul(1000), self.intern(&owner));
        let value = &v[1];
        self.observe(&version);
        self.apply(key, |e| e.apply_set(&version, value), Some((&version, value)));
    }

    fn on_delta(&mut self, now: Now, sender: &PeerId, time: u64, v: &[Value]) {
        if v.len() < 2 {
            return;
        }
        let Some(key) = key_bytes(&v[0]) else { return };
        let Some(map) = v[1].as_map() else { return };
        let Some(version) = self.write_version(now, &key, sender, time, v.get(2), true) else { return };
        self.apply(key, |e| e.apply_delta(&version, map), None);
    }

    // ----- anti-entropy -----------------------------------------------------

    fn pack(hashes: &[u64]) -> Value {
        let mut b = Vec::with_capacity(hashes.len() * 8);
        for h in hashes {
            b.extend_from_slice(&h.to_be_bytes());
        }
        Value::Binary(b)
    }

    fn unpack(v: &Value) -> Option<Vec<u64>> {
        let b = v.as_slice()?;
        if b.len() != DIGEST_BYTES {
            return None;
        }
        Some(b.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8]))).collect())
    }

    fn whisper(&mut self, conn: ConnId, subflag: u64, packets: &[Value]) {
        let frame = Frame::build(MsgType::Whisper as u8, &self.me, self.clock_ms / 1000, subflag, packets);
        self.out.push_back(Action::Send(conn, frame));
    }

    fn send_top_digest(&mut self, conn: ConnId) {
        let d = Self::pack(&self.top);
        self.whisper(conn, SUBFLAG_DIGEST, &[Value::from(0), d]);
    }

    fn on_digest(&mut self, now: Now, conn: ConnId, v: &[Value]) {
        match v.first().and_then(Value::as_u64) {
            // A new round from a peer whose entries are still arriving:
            // answering would make it resend them. Its next round will do.
            Some(0) if self.transfer_under_way(now, conn) => {}
            Some(0) => {
                let Some(theirs) = v.get(1).and_then(Self::unpack) else { return };
                let replies: Vec<Value> = (0..TOP_BUCKETS)
                    .filter(|&b| theirs[b] != self.top[b])
                    .map(|b| Value::Array(vec![Value::from(b), Self::pack(&self.leaf[b * 256..(b + 1) * 256])]))
                    .collect();
                for chunk in replies.chunks(64) {
                    self.whisper(conn, SUBFLAG_DIGEST, &[Value::from(1), Value::Array(chunk.to_vec())]);
                }
            }
            Some(1) => {
                let Some(list) = v.get(1).and_then(Value::as_array) else { return };
                let mut leaves = Vec::new();
                for item in list.iter().take(TOP_BUCKETS) {
                    let Some(pair) = item.as_array().filter(|p| p.len() == 2) else { continue };
                    let (Some(b), Some(theirs)) = (pair[0].as_u64(), Self::unpack(&pair[1])) else { continue };
                    let Ok(b) = usize::try_from(b) else { continue };
                    if b >= TOP_BUCKETS {
                        continue;
                    }
                    for (s, their) in theirs.iter().enumerate() {
                        let leaf = b * 256 + s;
                        if self.leaf[leaf] != *their {
                            leaves.push(leaf as u16);
                        }
                    }
                }
                self.send_leaves(conn, &leaves);
            }
            _ => {}
        }
    }

    fn send_leaves(&mut self, conn: ConnId, leaves: &[u16]) {
        let mut batch = Vec::new();
        let mut size = 0;
        let mut batches = Vec::new();
        if leaves.is_empty() {
            return;
        }
        // One pass over the entries, whatever the number of leaves asked.
        let mut wanted = vec![false; LEAF_BUCKETS];
        for &leaf in leaves {
            wanted[usize::from(leaf)] = true;
        }
        for (k, s) in self.entries.iter().filter(|(_, s)| wanted[usize::from(s.leaf)]) {
            let w = s.entry.to_wire(k);
            size += k.len() + 64 + approx_size(&s.entry.base);
            batch.push(w);
            if size >= self.cfg.max_batch_bytes {
                batches.push(std::mem::take(&mut batch));
                size = 0;
            }
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        for b in batches {
            self.whisper(conn, SUBFLAG_ENTRIES, &[Value::Array(b)]);
        }
    }

    fn on_entries(&mut self, now: Now, v: &[Value]) {
        let Some(list) = v.first().and_then(Value::as_array) else { return };
        let cutoff = now.unix_ms.saturating_sub(self.cfg.tombstone_ttl_ms);
        for item in list {
            let Some((key, mut remote)) = Entry::from_wire(item) else { continue };
            // A tombstone older than the purge horizon is already forgotten
            // here; taking it back would only be purged again.
            if remote.is_tombstone() && remote.base_version.ts_ms < cutoff && self.slot(&key).is_none() {
                continue;
            }
            self.observe(remote.latest());
            self.intern_entry(&mut remote);
            let create = (remote.fields.is_empty()).then(|| (remote.base_version.clone(), remote.base.clone()));
            match create {
                Some((ver, val)) => self.apply(key, |e| e.merge(&remote), Some((&ver, &val))),
                None => self.apply(key, |e| e.merge(&remote), None),
            }
        }
    }
}

fn approx_size(v: &Value) -> usize {
    match v {
        Value::String(s) => s.as_bytes().len(),
        Value::Binary(b) => b.len(),
        Value::Array(a) => a.iter().map(approx_size).sum::<usize>() + 1,
        Value::Map(m) => m.iter().map(|(k, v)| approx_size(k) + approx_size(v)).sum::<usize>() + 1,
        _ => 9,
    }
}

#[cfg(test)]
mod tests;
