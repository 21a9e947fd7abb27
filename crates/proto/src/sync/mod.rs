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
//! - **Proven writes** (`proof.rs`). A replica with a key
//!   ([`Config::identity`]) signs the writes of each local command once
//!   (the root of a hash tree over them) and every write keeps its proof:
//!   in its store or delta (the trailing field grows to `[ts_ms,
//!   public_key, signature, [[index, path, content], ...]]`), in
//!   anti-entropy records and in the durable store. Records are checked
//!   before they are merged: a write claiming a writer known to prove its
//!   writes without a valid proof is refused ([`SyncStats::forged_writes`]).
//! - **Anti-entropy** (`0x20` digest, `0x21` entries, whispers between rs2p
//!   peers only; `anti_entropy.rs`). Keys hash into 65,536 leaf buckets, 256 at the top level;
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
//! order. A write acknowledged by [`Command::Set`]'s reply is in the local replica at
//! once and is not lost while that replica, or any other that received it,
//! stays in the network. Reads are local: they may lag other replicas.
//! Under leases every write, local or received, with or without `[ts_ms]`,
//! is judged by one rule applied to the set of writes seen (`lease.rs`):
//! during a partition two nodes can both take a free key; after the heal
//! the one that took it first keeps it, everywhere. A `[ts_ms]` outside its
//! header's second is a made-up version and is dropped.
//!
//! py2p replicas keep py2p's rules: they see rs2p writes as second-resolution
//! stores, apply py2p's lease check, forget deletes, and are repaired only by
//! the per-key state transfer on new connections. They can therefore
//! disagree with the rs2p replicas after concurrent writes or partitions.
//! Without leases rs2p applies py2p's lease check to writes that come from
//! py2p nodes; with leases, the rule of `lease.rs` (both are there).
//!
//! # Driving it
//! As the mesh: [`Replica::handle`] takes an [`Input`] (a peer up or down, a
//! sync message the mesh delivered, the timer, or a local [`Command`]);
//! drain [`Replica::poll_output`]; wake it at [`Replica::poll_timeout`].
//! Message layouts are in [`crate::wire::message`].

mod anti_entropy;
pub mod entry;
mod lease;
pub mod proof;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rmpv::Value;
use sha2::{Digest as _, Sha256};

pub use entry::{Entry, Field, ProofSlot, Version};
use lease::Write;
pub use lease::{Holding, Holdings, LEASE_MS, MAX_HOLDINGS};
use proof::{content_hash, Checker, Content, ProofError, MAX_BATCH_WRITES};

use crate::id::PeerId;
use crate::identity::Identity;
use crate::mesh::ConnId;
use crate::wire::message::{EntryRecord, Proof, SyncMessage, TreeNode, WriteProof};
use crate::wire::{Frame, Packet};
use crate::{Now, RequestId};

/// Most distinct owner ids a replica shares among its entries; owners past
/// it get a copy each (so a flood of made-up ids cannot grow the table).
const MAX_INTERNED_OWNERS: usize = 4096;
/// Most writers remembered as proving their writes; past it, new ones are
/// not added (their unproven records are then taken, as a py2p writer's).
pub const MAX_KEYED_WRITERS: usize = 1 << 16;
const TOP_BUCKETS: usize = crate::wire::message::DIGEST_BUCKETS;
const LEAF_BUCKETS: usize = TOP_BUCKETS * TOP_BUCKETS;
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
    /// [`crate::wire::DEFAULT_MAX_FRAME_LEN`]; a [`crate::node::Node`] sets
    /// it to its mesh's limit.
    pub max_frame_len: usize,
    /// The node's key, to prove its writes (`proof.rs`): it must be the
    /// key behind the replica's id. `None` (the default): writes go out
    /// unproven, as a py2p node's.
    pub identity: Option<Identity>,
    /// Refuse every write that comes without its writer's valid proof
    /// (py2p writers included), not only those of writers known to prove
    /// theirs. A [`crate::node::Node`] sets it when its mesh requires
    /// signed broadcasts ([`crate::mesh::Config::require_signed`]).
    pub require_proofs: bool,
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
            identity: None,
            require_proofs: false,
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

/// Something that happens to a replica.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A peer completed its handshake on `conn`; `rs2p` tells whether it is
    /// rs2p (anti-entropy) or py2p (per-key state transfer).
    PeerUp {
        /// The connection.
        conn: ConnId,
        /// Whether the peer is rs2p.
        rs2p: bool,
    },
    /// The peer on `conn` went away.
    PeerDown {
        /// The connection.
        conn: ConnId,
    },
    /// A sync message (store, delta, digest, entries) the mesh delivered on
    /// `conn`. Malformed messages are ignored, as py2p does.
    Message {
        /// The connection.
        conn: ConnId,
        /// The packet.
        packet: Packet,
    },
    /// The time [`Replica::poll_timeout`] asked for has come.
    Timeout,
    /// A local write; answered by one [`Output::Reply`].
    Command {
        /// Echoed in the reply.
        request: RequestId,
        /// What to do.
        command: Command,
    },
}

/// A local write to the dictionary.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Set `key` to `value` (nil deletes, as in py2p).
    Set {
        /// The key.
        key: Bytes,
        /// The value.
        value: Value,
    },
    /// Set several pairs in order (py2p's `update`); stops at the first
    /// refused key (earlier ones stay written).
    Update {
        /// The pairs.
        pairs: Vec<(Bytes, Value)>,
    },
    /// Delete `key` ([`WriteError::NotFound`] if it holds no value).
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Merge `delta` into the map at `key` (creating it).
    Delta {
        /// The key.
        key: Bytes,
        /// The fields to set.
        delta: Vec<(Value, Value)>,
    },
    /// Delete `key` (or, with `None`, some key) and give back its value
    /// (py2p's `pop` and `popitem`).
    Pop {
        /// The key, or `None` for any.
        key: Option<Bytes>,
    },
}

/// What a successful write gives back.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// Applied locally and flooded.
    Done,
    /// [`Command::Pop`]: the key removed and the value it held.
    Popped(Bytes, Value),
}

/// What the replica asks of the mesh below it, and tells the application.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Flood this frame.
    Broadcast(Frame),
    /// Send this frame to one connection.
    Send {
        /// The connection.
        conn: ConnId,
        /// The frame.
        frame: Frame,
    },
    /// Tell the application.
    Event(Event),
    /// The answer to a command.
    Reply {
        /// The command answered.
        request: RequestId,
        /// Its result.
        result: Result<Reply, WriteError>,
    },
}

/// A local write being made.
#[derive(Debug)]
enum Payload {
    /// A set (nil: a delete).
    Set(Value),
    /// A delta's fields.
    Delta(Vec<(Value, Value)>),
}

impl Payload {
    /// The contents of its parts (one per field of a delta).
    fn contents(&self) -> Vec<TreeNode> {
        match self {
            Payload::Set(v) => vec![content_hash(Content::Set(v))],
            Payload::Delta(fields) => fields.iter().map(|(k, v)| content_hash(Content::Field(k, v))).collect(),
        }
    }
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
    pub(crate) me: PeerId,
    pub(crate) cfg: Config,
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
    out: VecDeque<Output>,
    /// Owner ids shared by the entries: an entry must not hold a slice of
    /// the frame it came in (that would pin the whole read buffer), and a
    /// copy per entry would cost ~100 bytes per key.
    owners: HashSet<PeerId, foldhash::quality::FixedState>,
    /// Whether changes produce [`Output::Event`]s.
    report_changes: bool,
    /// Keys changed (or purged) since [`Replica::take_changes`], when a
    /// durable store wants them ([`Replica::track_changes`]).
    changed: Option<HashSet<Bytes, foldhash::quality::FixedState>>,
    /// The write batches whose signature was checked.
    checker: Checker,
    /// Writers known to prove their writes: an unproven record of theirs
    /// is a forgery.
    keyed: HashSet<PeerId>,
    /// When a refused write may next be logged at info level.
    next_log_ms: u64,
    stats: SyncStats,
}

/// Counters of a replica's anti-entropy, for monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Anti-entropy rounds this replica started (a digest sent to a peer).
    pub anti_entropy_rounds: u64,
    /// Entries received through anti-entropy (repairs offered by peers).
    pub entries_received: u64,
    /// Writes from peers that a lease refused: they started a holding
    /// inside another node's lease (`lease.rs`), so they are kept, as every
    /// replica keeps them, but never shown.
    pub lease_refused: u64,
    /// Writes from peers dropped because their `[ts_ms]` is not within the
    /// second their header states (a made-up version).
    pub bad_versions: u64,
    /// Writes refused as forged: a proof that does not check, or, in an
    /// anti-entropy record, no proof for a writer known to prove its
    /// writes (or a holding whose bounds its writer did not sign).
    pub forged_writes: u64,
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

/// py2p's truthiness, for its state-transfer rule.
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
            changed: None,
            checker: Checker::default(),
            keyed: HashSet::new(),
            next_log_ms: 0,
            stats: SyncStats::default(),
        }
    }

    /// Remembers `id` as a writer that proves its writes (the node learned
    /// it from a signature or a link proof): from now on an anti-entropy
    /// record of a write of `id` without a proof is refused.
    pub fn learn_keyed(&mut self, id: &PeerId) {
        if self.keyed.len() < MAX_KEYED_WRITERS && !self.keyed.contains(id) {
            self.keyed.insert(id.clone());
        }
    }

    /// Every writer known to prove its writes.
    pub fn keyed(&self) -> impl Iterator<Item = &PeerId> + '_ {
        self.keyed.iter()
    }

    /// Learns the writers of `e`'s proven writes as keyed.
    fn learn_proven_writers(&mut self, e: &Entry) {
        e.for_each_proof(&mut |owner, _| self.learn_keyed(owner));
    }

    /// Whether `id` is known to prove its writes.
    pub fn is_keyed(&self, id: &PeerId) -> bool {
        self.keyed.contains(id)
    }

    // ----- durability -------------------------------------------------------

    /// Keeps (`true`) or stops keeping the set of keys changed since the
    /// last [`Replica::take_changes`]: for a driver that stores the
    /// dictionary.
    pub fn track_changes(&mut self, on: bool) {
        self.changed = on.then(|| HashSet::with_hasher(foldhash::quality::FixedState::with_seed(0x6368_6e67)));
    }

    /// The keys changed since the last call, each with its entry as it is
    /// now (`None`: purged, forget it). Empty unless tracking.
    pub fn take_changes(&mut self) -> Vec<(Bytes, Option<EntryRecord>)> {
        let Some(changed) = self.changed.as_mut() else { return Vec::new() };
        let keys: Vec<Bytes> = changed.drain().collect();
        keys.into_iter()
            .map(|k| {
                let rec = self.entries.get(&k).map(|s| s.entry.to_record(&k));
                (k, rec)
            })
            .collect()
    }

    /// Loads stored entries (before the node runs): merged in as
    /// anti-entropy would, without change events or change tracking.
    pub fn restore(&mut self, records: impl IntoIterator<Item = EntryRecord>) {
        let (report, changed) = (self.report_changes, self.changed.take());
        self.report_changes = false;
        let mut sharing = proof::Sharing::default();
        for rec in records {
            let (key, mut e) = self.entry_from_record(rec);
            e.proofs_mut(&mut |p| sharing.share(p));
            // Writers whose stored writes carry proofs prove their writes:
            // what a restarted node knew of them comes back with its store.
            self.learn_proven_writers(&e);
            self.observe(e.latest());
            self.merge_entry(key, &e);
        }
        self.report_changes = report;
        self.changed = changed;
    }

    // ----- the door ---------------------------------------------------------

    /// Feeds one input. Drain [`Replica::poll_output`] afterwards.
    pub fn handle(&mut self, now: Now, input: Input) {
        match input {
            Input::PeerUp { conn, rs2p } => self.on_peer_up(now, conn, rs2p),
            Input::PeerDown { conn } => {
                self.peers.remove(&conn);
                self.receiving_from.remove(&conn);
            }
            Input::Message { conn, packet } => self.on_message(now, conn, &packet),
            Input::Timeout => self.on_timeout(now),
            Input::Command { request, command } => {
                let result = self.on_command(now, command);
                self.out.push_back(Output::Reply { request, result });
            }
        }
    }

    /// The next output. Drain after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When the replica next needs an [`Input::Timeout`] (monotonic ms):
    /// the next anti-entropy round while an rs2p peer is connected, the next
    /// tombstone purge while tombstones exist.
    pub fn poll_timeout(&self) -> Option<u64> {
        let ae = self.peers.values().any(|&rs2p| rs2p).then_some(self.next_ae_ms);
        let purge = (self.entries.len() > self.live).then_some(self.next_purge_ms);
        ae.into_iter().chain(purge).min()
    }

    /// Whether changes produce [`Output::Event`]s (on by default). A driver
    /// whose application does not listen turns them off, which spares a
    /// copy of every changed value.
    pub fn set_report_changes(&mut self, on: bool) {
        self.report_changes = on;
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.cfg
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

    /// The anti-entropy counters.
    pub fn stats(&self) -> SyncStats {
        self.stats
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

    /// Every entry, tombstones included (for comparing replicas).
    pub fn entries(&self) -> impl Iterator<Item = (&Bytes, &Entry)> + '_ {
        self.entries.iter().map(|(k, s)| (k, &s.entry))
    }

    /// A digest of the whole replica (tombstones included): two replicas
    /// with equal digests hold the same state.
    pub fn state_digest(&self) -> u64 {
        self.top.iter().fold(0u64, |acc, &d| acc.rotate_left(5) ^ d)
    }

    // ----- local writes -----------------------------------------------------

    fn on_command(&mut self, now: Now, command: Command) -> Result<Reply, WriteError> {
        match command {
            Command::Set { key, value } => self.write(now, vec![(key, Payload::Set(value))]).map(|()| Reply::Done),
            Command::Update { pairs } => {
                let writes = pairs.into_iter().map(|(k, v)| (k, Payload::Set(v))).collect();
                self.write(now, writes).map(|()| Reply::Done)
            }
            Command::Delete { key } => {
                if self.get(&key).is_none() {
                    return Err(WriteError::NotFound);
                }
                self.write(now, vec![(key, Payload::Set(Value::Nil))]).map(|()| Reply::Done)
            }
            // An empty delta writes nothing (but is still checked).
            Command::Delta { key, delta } if delta.is_empty() => match self.get(&key) {
                Some(v) if !v.is_map() => Err(WriteError::NotAMap),
                _ => Ok(Reply::Done),
            },
            Command::Delta { key, delta } => self.write(now, vec![(key, Payload::Delta(delta))]).map(|()| Reply::Done),
            Command::Pop { key } => {
                let key = key.or_else(|| self.items().next().map(|(k, _, _)| k.clone()));
                let Some((key, value)) = key.and_then(|k| self.get(&k).map(|v| (k, v))) else {
                    return Err(WriteError::NotFound);
                };
                self.write(now, vec![(key.clone(), Payload::Set(Value::Nil))])?;
                Ok(Reply::Popped(key, value))
            }
        }
    }

    /// Makes local writes, in order, stopping at the first refused one
    /// (the earlier ones stay written): each is checked and versioned,
    /// then all are proven together (one signature per batch), applied and
    /// flooded.
    fn write(&mut self, now: Now, writes: Vec<(Bytes, Payload)>) -> Result<(), WriteError> {
        let mut ready = Vec::with_capacity(writes.len());
        let mut refused = None;
        for (key, payload) in writes {
            match self.prepare_write(now, &key, &payload) {
                Ok(version) => ready.push((key, version, payload)),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        let proofs = self.prove(&ready);
        for ((key, mut version, payload), proofs) in ready.into_iter().zip(proofs) {
            let secs = version.secs();
            let frame = match &payload {
                Payload::Set(value) => {
                    SyncMessage::encode_store(&self.me, secs, &key, value, Some(version.ts_ms), &proofs)
                }
                Payload::Delta(fields) => {
                    SyncMessage::encode_delta(&self.me, secs, &key, fields, Some(version.ts_ms), &proofs)
                }
            };
            // Peers close links that send frames above their limit: refuse
            // before it is applied.
            let len = frame.body().len();
            if len > self.cfg.max_frame_len {
                refused = Some(WriteError::TooLarge { len, max: self.cfg.max_frame_len });
                break;
            }
            match &payload {
                Payload::Set(value) => {
                    version.proof = ProofSlot(proofs.into_iter().next());
                    self.apply_write(key, &version, Write::Set(value));
                }
                Payload::Delta(fields) => {
                    let slots: Vec<ProofSlot> = proofs.into_iter().map(|p| ProofSlot(Some(p))).collect();
                    self.apply_write(key, &version, Write::Delta(fields, &slots));
                }
            }
            self.out.push_back(Output::Broadcast(frame));
        }
        refused.map_or(Ok(()), Err)
    }

    /// The proofs of local writes (none without a key), one list per write
    /// (one proof per field of a delta): writes go in batches of up to
    /// [`MAX_BATCH_WRITES`] parts, a delta's fields never split.
    fn prove(&self, ready: &[(Bytes, Version, Payload)]) -> Vec<Vec<Arc<WriteProof>>> {
        let Some(identity) = self.cfg.identity.as_ref() else { return vec![Vec::new(); ready.len()] };
        let mut out = Vec::with_capacity(ready.len());
        let mut batch: Vec<(TreeNode, TreeNode)> = Vec::new();
        let mut sizes: Vec<usize> = Vec::new();
        let flush = |batch: &mut Vec<(TreeNode, TreeNode)>, sizes: &mut Vec<usize>, out: &mut Vec<_>| {
            let mut proofs = proof::sign_batch(identity, batch).into_iter();
            for n in sizes.drain(..) {
                out.push(proofs.by_ref().take(n).collect::<Vec<_>>());
            }
            batch.clear();
        };
        for (key, version, payload) in ready {
            let parts: Vec<(TreeNode, TreeNode)> =
                payload.contents().into_iter().map(|c| (proof::leaf(key, &self.me, version.ts_ms, &c), c)).collect();
            if !batch.is_empty() && batch.len() + parts.len() > MAX_BATCH_WRITES {
                flush(&mut batch, &mut sizes, &mut out);
            }
            sizes.push(parts.len());
            batch.extend(parts);
        }
        flush(&mut batch, &mut sizes, &mut out);
        out
    }

    /// Checks a local write (lease, delta target) and stamps it with a
    /// version, from one lookup of the key. Nothing is changed on refusal.
    fn prepare_write(&mut self, now: Now, key: &Bytes, payload: &Payload) -> Result<Version, WriteError> {
        let current = self.entries.get(key).map(|s| &s.entry);
        // The hybrid clock: never behind what this replica has seen, nor
        // behind the key's own newest version.
        let floor = current.map(|e| e.latest().ts_ms + 1).unwrap_or(0);
        let ts = now.unix_ms.max(self.clock_ms + 1).max(floor);
        if let Some(e) = current {
            if matches!(payload, Payload::Delta(_)) && matches!(e.value(), Some(v) if !v.is_map()) {
                return Err(WriteError::NotAMap);
            }
            if let Some(err) = self.lease_error(e, ts) {
                return Err(err);
            }
        }
        self.clock_ms = ts;
        Ok(Version::new(ts, self.me.clone()))
    }

    /// Applies one write (local or from the network): under leases through
    /// the holdings (`lease.rs`), otherwise by version order alone.
    fn apply_write(&mut self, key: Bytes, version: &Version, write: Write<'_>) {
        if self.cfg.leasing {
            let lease = self.cfg.lease_ms;
            let mut refused = false;
            self.apply(
                key,
                |e| {
                    let changed = e.apply_leased(version, write, lease);
                    refused = !e.grants(version, lease);
                    changed
                },
                None,
            );
            self.stats.lease_refused += u64::from(refused);
            return;
        }
        match write {
            Write::Set(value) => self.apply(key, |e| e.apply_set(version, value), Some((version, value))),
            Write::Delta(..) => self.apply(key, |e| e.apply_to_register(version, write), None),
        }
    }

    /// Merges an entry from a peer or the store.
    fn merge_entry(&mut self, key: Bytes, remote: &Entry) {
        if self.cfg.leasing {
            let lease = self.cfg.lease_ms;
            self.apply(key, |e| e.merge_leased(remote, lease), None);
            return;
        }
        let create = remote.fields.is_empty().then(|| (remote.base_version.clone(), remote.base.clone()));
        match create {
            Some((ver, val)) => self.apply(key, |e| e.merge(remote), Some((&ver, &val))),
            None => self.apply(key, |e| e.merge(remote), None),
        }
    }

    // ----- proofs -----------------------------------------------------------

    /// Checks the proof of a write by `owner` of `content` to `key` at
    /// `ts_ms`: the proof to keep (checked, or none for a writer not known
    /// to prove its writes, when `unproven_ok`), or why it is refused.
    fn check_write(
        &mut self,
        key: &[u8],
        owner: &PeerId,
        ts_ms: u64,
        content: &TreeNode,
        proof: Proof,
        unproven_ok: bool,
    ) -> Result<Proof, &'static str> {
        match proof {
            Some(p) => {
                let p = self.checker.check(key, owner, ts_ms, content, p).map_err(ProofError::as_reason)?;
                self.learn_keyed(owner);
                Ok(Some(p))
            }
            None if self.cfg.require_proofs => Err("no proof, and this node requires them"),
            None if unproven_ok || !self.is_keyed(owner) => Ok(None),
            None => Err("no proof, from a writer known to prove its writes"),
        }
    }

    /// Counts and logs a refused write: at info level once a second at
    /// most, at debug level otherwise.
    fn forged(&mut self, now: Now, key: &[u8], owner: &[u8], why: &'static str) {
        self.stats.forged_writes += 1;
        let owner = String::from_utf8_lossy(owner);
        let key = String::from_utf8_lossy(key);
        if now.mono_ms >= self.next_log_ms {
            self.next_log_ms = now.mono_ms + 1_000;
            tracing::info!(%owner, %key, why, forged = self.stats.forged_writes, "refusing a sync write");
        } else {
            tracing::debug!(%owner, %key, why, "refusing a sync write");
        }
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
            if let Some(c) = self.changed.as_mut() {
                c.insert(key.clone());
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
            if let Some(c) = self.changed.as_mut() {
                c.insert(key.clone());
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
            self.out.push_back(Output::Event(e));
        }
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

    fn observe(&mut self, v: &Version) {
        // The hybrid clock never falls behind what it has seen (bounded, so
        // one bogus future stamp cannot stall local writes for long).
        self.clock_ms = self.clock_ms.max(v.ts_ms.min(self.clock_ms.max(1) + 3_600_000));
    }

    // ----- inputs -----------------------------------------------------------

    /// A peer completed its handshake: rs2p peers get a digest, py2p peers
    /// py2p's per-key state transfer.
    fn on_peer_up(&mut self, now: Now, conn: ConnId, rs2p: bool) {
        self.peers.insert(conn, rs2p);
        if rs2p {
            self.send_top_digest(conn);
        } else {
            let frames: Vec<Frame> = self
                .items()
                .map(|(key, value, ver)| {
                    SyncMessage::StateTransfer {
                        key: key.clone(),
                        value,
                        owner: ver.owner.clone(),
                        timestamp: ver.secs(),
                    }
                    .encode(&self.me, now.unix())
                })
                .collect();
            for frame in frames {
                self.out.push_back(Output::Send { conn, frame });
            }
        }
    }

    /// Periodic work: tombstone purge, anti-entropy rounds.
    fn on_timeout(&mut self, now: Now) {
        if now.mono_ms >= self.next_purge_ms {
            // A scan of every entry: not on every tick. Tombstones live for
            // their TTL plus at most a sixteenth of it (and a minute).
            self.next_purge_ms = now.mono_ms + (self.cfg.tombstone_ttl_ms / 16).min(60_000);
            self.purge(now);
        }
        if now.mono_ms >= self.next_ae_ms {
            self.next_ae_ms = now.mono_ms + self.cfg.anti_entropy_interval_ms;
            self.start_round(now);
        }
    }

    fn purge(&mut self, now: Now) {
        let cutoff = now.unix_ms.saturating_sub(self.cfg.tombstone_ttl_ms);
        if self.cfg.leasing {
            let lease = self.cfg.lease_ms;
            let old: Vec<Bytes> = self
                .entries
                .iter()
                .filter(|(_, s)| matches!(s.entry.holdings.as_deref(), Some(Holdings::Many(_))))
                .map(|(k, _)| k.clone())
                .collect();
            for k in old {
                self.apply(k, |e| e.purge_holdings(cutoff, lease), None);
            }
        }
        let dead: Vec<Bytes> = self
            .entries
            .iter()
            .filter(|(_, s)| s.entry.is_tombstone() && s.entry.base_version.ts_ms < cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        for k in dead {
            if let Some(c) = self.changed.as_mut() {
                c.insert(k.clone());
            }
            if let Some(s) = self.entries.remove(&k) {
                let leaf = usize::from(s.leaf);
                self.leaf[leaf] ^= s.digest;
                self.top[leaf >> 8] ^= s.digest;
            }
        }
    }

    fn on_message(&mut self, now: Now, conn: ConnId, packet: &Packet) {
        let h = &packet.header;
        let Ok(msg) = SyncMessage::decode(packet) else { return };
        match msg {
            SyncMessage::Store { key, value, ts_ms, proof } => {
                let Some(mut version) = self.write_version(now, &key, &h.sender, h.time, ts_ms, false) else { return };
                if proof.is_some() || self.cfg.require_proofs {
                    let content = content_hash(Content::Set(&value));
                    match self.check_write(&key, &version.owner, version.ts_ms, &content, proof, true) {
                        Ok(p) => version.proof = ProofSlot(p),
                        Err(why) => return self.forged(now, &key, h.sender.as_bytes(), why),
                    }
                }
                self.apply_write(key, &version, Write::Set(&value));
            }
            SyncMessage::StateTransfer { key, value, owner, timestamp } => {
                // py2p applies a transferred key only where it holds nothing truthy.
                if self.get(&key).is_some_and(|cur| truthy(&cur)) {
                    return;
                }
                if !self.cfg.leasing && !self.py2p_accepts(now, &key, &owner, timestamp, false) {
                    return;
                }
                // A transfer carries no proof: it cannot stand for a writer
                // known to prove its writes (rs2p peers repair those).
                if self.cfg.require_proofs || self.is_keyed(&owner) {
                    return self.forged(now, &key, owner.as_bytes(), "a state transfer carries no proof");
                }
                let version = Version::new(timestamp.saturating_mul(1000), self.intern(&owner));
                self.observe(&version);
                self.apply_write(key, &version, Write::Set(&value));
            }
            SyncMessage::Delta { key, fields, ts_ms, proofs } => {
                let Some(version) = self.write_version(now, &key, &h.sender, h.time, ts_ms, true) else { return };
                if proofs.is_empty() && self.cfg.require_proofs {
                    return self.forged(now, &key, h.sender.as_bytes(), "no proof, and this node requires them");
                }
                let mut slots = Vec::with_capacity(proofs.len());
                for ((k, v), p) in fields.iter().zip(proofs) {
                    let content = content_hash(Content::Field(k, v));
                    match self.check_write(&key, &version.owner, version.ts_ms, &content, Some(p), true) {
                        Ok(p) => slots.push(ProofSlot(p)),
                        Err(why) => return self.forged(now, &key, h.sender.as_bytes(), why),
                    }
                }
                self.apply_write(key, &version, Write::Delta(&fields, &slots));
            }
            SyncMessage::Digest(d) => self.on_digest(now, conn, d),
            SyncMessage::Entries(records) => {
                self.receiving_from.insert(conn, now.mono_ms);
                self.stats.entries_received += records.len() as u64;
                self.on_entries(now, records);
            }
        }
    }

    /// The version of a broadcast write: the rs2p extension `[ts_ms]` when
    /// present; otherwise a py2p write, with second resolution, which
    /// without leases must pass py2p's lease rule (`None`: refused; with
    /// leases every write is judged by the holdings). Either way the hybrid
    /// clock observes it.
    fn write_version(
        &mut self,
        now: Now,
        key: &[u8],
        sender: &PeerId,
        time: u64,
        ts_ms: Option<u64>,
        delta: bool,
    ) -> Option<Version> {
        let version = match ts_ms {
            // An rs2p writer stamps the header with its version's second:
            // a version that disagrees is made up (a backdated one would
            // claim a lease early), and is dropped. The header's time is
            // itself bound by the mesh (stale broadcasts are dropped).
            Some(ts_ms) if ts_ms / 1000 != time => {
                self.stats.bad_versions += 1;
                return None;
            }
            Some(ts_ms) => Version::new(ts_ms, self.intern(sender)),
            None if self.cfg.leasing || self.py2p_accepts(now, key, sender, time, delta) => {
                Version::new(time.saturating_mul(1000), self.intern(sender))
            }
            None => return None,
        };
        self.observe(&version);
        Some(version)
    }
}

#[cfg(test)]
mod tests;
