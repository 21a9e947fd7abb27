//! The replicated dictionary's messages: py2p's stores and deltas, and
//! rs2p's anti-entropy digests and entries.

use std::sync::Arc;

use bytes::Bytes;
use rmpv::{Value, ValueRef};

use super::{key_of, peer_id_of, Malformed};
use crate::id::PeerId;
use crate::wire::{Frame, FrameBuilder, MsgType, Packet, SubFlag};

/// Buckets in an anti-entropy digest (top level) and leaves per bucket.
pub const DIGEST_BUCKETS: usize = 256;
/// Bytes of one packed digest: [`DIGEST_BUCKETS`] big-endian `u64`s.
const DIGEST_BYTES: usize = DIGEST_BUCKETS * 8;

/// An anti-entropy digest (rs2p only; whisper `0x20`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Digest {
    /// `[0, bin]`: the sender's 256 top-level bucket digests.
    Top(Vec<u64>),
    /// `[1, [[bucket, bin], ...]]`: the 256 leaf digests under each listed
    /// top bucket. Items that do not parse are skipped.
    Leaves(Vec<(u8, Vec<u64>)>),
}

/// A node of a write batch's hash tree: a SHA-256 truncated to 16 bytes
/// (the sync module's `proof.rs` builds and checks the trees).
pub type TreeNode = [u8; 16];

/// Most nodes in a [`WriteProof`]'s path (a batch of up to 2^32 writes).
pub const MAX_PROOF_PATH: usize = 32;

/// A writer's Ed25519 signature over the root of a batch of its writes,
/// with its public key (which must hash to the writer's id).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SignedRoot {
    /// The writer's public key.
    pub public_key: [u8; 32],
    /// Its signature over the batch's root.
    pub signature: [u8; 64],
}

/// Proof that one write is its writer's (rs2p): the write's place in a
/// batch its writer signed. Records carry it as `[public_key, signature,
/// index, path, content]`; live writes as part of their trailing field
/// (see [`SyncMessage::Store`]). Writes of one batch share their
/// [`SignedRoot`], and once checked their tree's nodes ([`BatchNodes`]).
#[derive(Debug, Clone)]
pub struct WriteProof {
    /// The batch's signed root.
    pub root: Arc<SignedRoot>,
    /// The write's leaf index in the batch.
    pub index: u32,
    /// The sibling nodes from the leaf up to the root.
    pub path: PathNodes,
    /// The hash of what the write wrote (kind, field, value): a record
    /// whose write is gone (a holding's first write) is still checkable.
    pub content: TreeNode,
}

impl WriteProof {
    /// The sibling nodes from the leaf up to the root.
    pub fn path(&self) -> ProofPath {
        match &self.path {
            PathNodes::Own(p) => p.iter().copied().collect(),
            PathNodes::Shared(nodes) => nodes.path(self.index),
        }
    }
}

impl PartialEq for WriteProof {
    fn eq(&self, other: &Self) -> bool {
        self.root == other.root
            && self.index == other.index
            && self.content == other.content
            && self.path() == other.path()
    }
}

/// Where a proof's path is kept.
#[derive(Debug, Clone)]
pub enum PathNodes {
    /// Its own copy (as read from the wire or a store; boxed, so a proof
    /// whose path is shared stays small).
    Own(Box<[TreeNode]>),
    /// In its batch's tree, shared with the batch's other writes.
    Shared(Arc<BatchNodes>),
}

/// The nodes of one batch's hash tree below the root, shared by the
/// batch's writes: each write's path is read from it, so a batch of 256
/// keeps 510 nodes instead of 256 paths of 8. Filled as the batch's
/// writes arrive (each brings its path).
#[derive(Debug)]
pub struct BatchNodes {
    depth: u8,
    nodes: Box<[std::sync::OnceLock<TreeNode>]>,
}

impl BatchNodes {
    /// Deepest tree kept shared: deeper ones (deltas of thousands of
    /// fields) keep a path per write.
    pub const MAX_DEPTH: usize = 10;

    /// An empty tree of `depth` levels below the root.
    pub fn new(depth: usize) -> Self {
        let depth = depth.min(Self::MAX_DEPTH);
        BatchNodes { depth: depth as u8, nodes: (0..(2usize << depth) - 2).map(|_| Default::default()).collect() }
    }

    /// The tree's depth (a path's length).
    pub fn depth(&self) -> usize {
        usize::from(self.depth)
    }

    fn slot(&self, level: usize, i: usize) -> usize {
        let d = self.depth();
        (2usize << d) - (2usize << (d - level)) + i
    }

    /// Keeps the path of the leaf at `index` (its siblings).
    pub fn fill(&self, index: u32, path: &[TreeNode]) {
        for (l, node) in path.iter().enumerate().take(self.depth()) {
            let at = self.slot(l, ((index as usize) >> l) ^ 1);
            if let Some(slot) = self.nodes.get(at) {
                let _ = slot.set(*node);
            }
        }
    }

    /// The path of the leaf at `index` (an unknown node reads as zeros, a
    /// path that will not check).
    pub fn path(&self, index: u32) -> ProofPath {
        (0..self.depth())
            .map(|l| {
                let at = self.slot(l, ((index as usize) >> l) ^ 1);
                self.nodes.get(at).and_then(|n| n.get().copied()).unwrap_or_default()
            })
            .collect()
    }
}

/// A proof's path: up to 8 nodes inline.
pub type ProofPath = smallvec::SmallVec<[TreeNode; 8]>;

/// A write's proof, if it has one (a py2p write never does).
pub type Proof = Option<Arc<WriteProof>>;

/// The `[index, path, content]` part of a proof, under `root`.
fn decode_leaf_part(
    root: Arc<SignedRoot>,
    index: &ValueRef<'_>,
    path: &ValueRef<'_>,
    content: &ValueRef<'_>,
) -> Option<Arc<WriteProof>> {
    let path = ref_bytes(path)?;
    if path.len() % 16 != 0 || path.len() / 16 > MAX_PROOF_PATH {
        return None;
    }
    Some(Arc::new(WriteProof {
        root,
        index: u32::try_from(index.as_u64()?).ok()?,
        path: PathNodes::Own(path.chunks_exact(16).map(|c| c.try_into().expect("16 bytes")).collect()),
        content: ref_bytes(content)?.try_into().ok()?,
    }))
}

fn decode_root(key: &ValueRef<'_>, sig: &ValueRef<'_>) -> Option<Arc<SignedRoot>> {
    Some(Arc::new(SignedRoot {
        public_key: ref_bytes(key)?.try_into().ok()?,
        signature: ref_bytes(sig)?.try_into().ok()?,
    }))
}

/// Writes the `[index, path, content]` part of a proof.
fn put_leaf_part(b: &mut FrameBuilder, p: &WriteProof) {
    b.uint(u64::from(p.index)).bin(p.path().as_flattened()).bin(&p.content);
}

/// A proof as records carry it.
pub fn proof_value(p: &WriteProof) -> Value {
    Value::Array(vec![
        Value::Binary(p.root.public_key.to_vec()),
        Value::Binary(p.root.signature.to_vec()),
        Value::from(p.index),
        Value::Binary(p.path().as_flattened().to_vec()),
        Value::Binary(p.content.to_vec()),
    ])
}

/// Writes a proof as records carry it, straight into a frame.
fn put_proof(b: &mut FrameBuilder, p: &WriteProof) {
    b.array_len(5).bin(&p.root.public_key).bin(&p.root.signature);
    put_leaf_part(b, p);
}

/// One field of an [`EntryRecord`]: `[field, ts_ms, owner, value]`, and a
/// fifth element, its proof, when it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldRecord {
    /// The field's key within the map.
    pub key: Value,
    /// When the delta that set it was written (ms).
    pub ts_ms: u64,
    /// Who wrote it.
    pub owner: PeerId,
    /// Its value.
    pub value: Value,
    /// Its writer's proof (rs2p writers).
    pub proof: Proof,
}

/// One holding of a leased key (see the sync module's leases): one owner's
/// writes that lie less than a lease apart, `[owner, start_ms, end_ms,
/// [ts_ms, base_owner(, proof)], base, [fields...]]`, the writes merged as an
/// entry's are, and a seventh element when the first write is proven: its
/// proof.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldingRecord {
    /// Whose writes these are.
    pub owner: PeerId,
    /// The first write's time (ms).
    pub start_ms: u64,
    /// The last write's time (ms).
    pub end_ms: u64,
    /// When the holding's latest set or delete was written (ms; 0: none).
    pub base_ts_ms: u64,
    /// Its writer (empty when the holding has only deltas).
    pub base_owner: Bytes,
    /// Its writer's proof.
    pub base_proof: Proof,
    /// Its value (nil: deleted, or no set).
    pub base: Value,
    /// Fields set by the holding's later deltas.
    pub fields: Vec<FieldRecord>,
    /// The proof of the holding's first write (at `start_ms`), which may
    /// be gone from its writes.
    pub start_proof: Proof,
}

/// One key's replicated state as anti-entropy sends it:
/// `[key, [ts_ms, owner(, proof)], base, [[field, ts_ms, owner, value(,
/// proof)], ...]]`,
/// and, for a key under leases, a fifth element: its holdings
/// (`[[owner, start_ms, end_ms, [ts_ms, owner], base, fields], ...]`).
#[derive(Debug, Clone, PartialEq)]
pub struct EntryRecord {
    /// The key.
    pub key: Bytes,
    /// When the latest set or delete was written (ms).
    pub base_ts_ms: u64,
    /// Who wrote it (empty for an entry created by a delta).
    pub base_owner: Bytes,
    /// Its writer's proof.
    pub base_proof: Proof,
    /// Its value (nil: deleted).
    pub base: Value,
    /// Fields set by later deltas.
    pub fields: Vec<FieldRecord>,
    /// Under leases: every holding of the key (the base and fields above
    /// are then what they add up to). Empty without leases.
    pub holdings: Vec<HoldingRecord>,
}

fn fields_value(fields: &[FieldRecord]) -> Value {
    Value::Array(
        fields
            .iter()
            .map(|f| {
                let mut a = vec![
                    f.key.clone(),
                    Value::from(f.ts_ms),
                    Value::Binary(f.owner.as_bytes().to_vec()),
                    f.value.clone(),
                ];
                if let Some(p) = &f.proof {
                    a.push(proof_value(p));
                }
                Value::Array(a)
            })
            .collect(),
    )
}

fn base_version_value(ts_ms: u64, owner: &Bytes, proof: &Proof) -> Value {
    let mut a = vec![Value::from(ts_ms), Value::Binary(owner.to_vec())];
    if let Some(p) = proof {
        a.push(proof_value(p));
    }
    Value::Array(a)
}

fn holdings_value(holdings: &[HoldingRecord]) -> Value {
    Value::Array(
        holdings
            .iter()
            .map(|h| {
                let mut a = vec![
                    Value::Binary(h.owner.as_bytes().to_vec()),
                    Value::from(h.start_ms),
                    Value::from(h.end_ms),
                    base_version_value(h.base_ts_ms, &h.base_owner, &h.base_proof),
                    h.base.clone(),
                    fields_value(&h.fields),
                ];
                if let Some(p) = &h.start_proof {
                    a.push(proof_value(p));
                }
                Value::Array(a)
            })
            .collect(),
    )
}

impl EntryRecord {
    /// The record as msgpack bytes, in the layout anti-entropy sends (for a
    /// durable store).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut record = vec![
            Value::Binary(self.key.to_vec()),
            base_version_value(self.base_ts_ms, &self.base_owner, &self.base_proof),
            self.base.clone(),
            fields_value(&self.fields),
        ];
        if !self.holdings.is_empty() {
            record.push(holdings_value(&self.holdings));
        }
        let mut out = Vec::new();
        crate::wire::msgpack::write_value(&mut out, &Value::Array(record));
        out
    }

    /// A record from [`EntryRecord::to_bytes`]; `None` if the bytes are not
    /// one (with nothing left over).
    pub fn from_bytes(bytes: &[u8]) -> Option<EntryRecord> {
        let mut rd = bytes;
        let v = rmpv::decode::read_value_ref(&mut rd).ok()?;
        if !rd.is_empty() {
            return None;
        }
        decode_entry(&v)
    }
}

/// A message of the replicated dictionary.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncMessage {
    /// Broadcast `0x0B`: `[key, value]`, plus rs2p's trailing field when
    /// an rs2p node wrote it: `[ts_ms]`, or, from a writer that proves its
    /// writes, `[ts_ms, public_key, signature, [[index, path, content]]]`.
    /// The owner is the sender, the time the header's. A nil value deletes.
    Store {
        /// The key.
        key: Bytes,
        /// The new value (nil: delete).
        value: Value,
        /// rs2p's millisecond version, if present.
        ts_ms: Option<u64>,
        /// The writer's proof, if present.
        proof: Proof,
    },
    /// Whisper `0x0B`: `[key, value, owner, timestamp]`, py2p's state
    /// transfer on a new connection (one per key).
    StateTransfer {
        /// The key.
        key: Bytes,
        /// Its value.
        value: Value,
        /// Its owner.
        owner: PeerId,
        /// Its timestamp, UNIX seconds.
        timestamp: u64,
    },
    /// Broadcast `0x11`: `[key, {field: value, ...}]` (plus rs2p's trailing
    /// field, as [`SyncMessage::Store`]'s, with one proof per field in map
    /// order): merge the map into the map at `key`.
    Delta {
        /// The key.
        key: Bytes,
        /// The fields to set.
        fields: Vec<(Value, Value)>,
        /// rs2p's millisecond version, if present.
        ts_ms: Option<u64>,
        /// One proof per field (empty: unproven).
        proofs: Vec<Arc<WriteProof>>,
    },
    /// Whisper `0x20` (rs2p): see [`Digest`].
    Digest(Digest),
    /// Whisper `0x21` (rs2p): entries of the leaves the peer lacks. Entries
    /// that do not parse are skipped.
    Entries(Vec<EntryRecord>),
}

/// The proofs in rs2p's trailing field (`[ts_ms, public_key, signature,
/// [[index, path, content], ...]]`), read from borrowed values; empty when
/// absent or malformed (the write is then unproven).
fn ext_proofs(v: Option<&ValueRef<'_>>) -> Vec<Arc<WriteProof>> {
    let Some([_, key, sig, list]) = v.and_then(ref_array) else { return Vec::new() };
    let (Some(root), Some(list)) = (decode_root(key, sig), ref_array(list)) else { return Vec::new() };
    let leaf = |p: &ValueRef<'_>| {
        let [index, path, content] = ref_array(p)? else { return None };
        decode_leaf_part(root.clone(), index, path, content)
    };
    list.iter().map(leaf).collect::<Option<Vec<_>>>().unwrap_or_default()
}

/// Writes rs2p's trailing field: `[ts]`, or with `proofs` (one batch's).
fn put_ext(b: &mut FrameBuilder, ts: u64, proofs: &[Arc<WriteProof>]) {
    let Some(first) = proofs.first() else {
        b.array_len(1).uint(ts);
        return;
    };
    b.array_len(4).uint(ts).bin(&first.root.public_key).bin(&first.root.signature).array_len(proofs.len());
    for p in proofs {
        b.array_len(3);
        put_leaf_part(b, p);
    }
}

fn pack(b: &mut FrameBuilder, hashes: &[u64]) {
    let mut bytes = Vec::with_capacity(hashes.len() * 8);
    for h in hashes {
        bytes.extend_from_slice(&h.to_be_bytes());
    }
    b.bin(&bytes);
}

fn unpack(v: &Value) -> Option<Vec<u64>> {
    let b = v.as_slice()?;
    if b.len() != DIGEST_BYTES {
        return None;
    }
    Some(b.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8]))).collect())
}

impl SyncMessage {
    /// Reads a sync message. Only the sync sub-flags with their message
    /// types are sync messages.
    ///
    /// # Errors
    /// [`Malformed`] for anything else, or fields of the wrong shape.
    pub fn decode(p: &Packet) -> Result<SyncMessage, Malformed> {
        let h = &p.header;
        let (Some(kind), Some(flag)) = (h.kind(), SubFlag::from_u64(h.subflag)) else {
            return Err(Malformed("not a sync message"));
        };
        // Writes and records are read from borrowed values (see
        // `decode_entry`).
        if matches!((flag, kind), (SubFlag::Store | SubFlag::Delta, MsgType::Broadcast)) {
            let v = p.value_refs().map_err(|_| Malformed("undecodable packets"))?;
            if v.len() < 2 {
                return Err(Malformed("write field count"));
            }
            let key = Bytes::copy_from_slice(ref_bytes(&v[0]).ok_or(Malformed("write key"))?);
            let ts_ms = v.get(2).and_then(ref_array).and_then(|a| a.first()?.as_u64());
            let mut proofs = ext_proofs(v.get(2));
            if flag == SubFlag::Store {
                return Ok(SyncMessage::Store { key, value: v[1].to_owned(), ts_ms, proof: proofs.pop() });
            }
            let ValueRef::Map(map) = &v[1] else { return Err(Malformed("delta is not a map")) };
            let fields: Vec<(Value, Value)> = map.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            if proofs.len() != fields.len() {
                proofs.clear();
            }
            return Ok(SyncMessage::Delta { key, fields, ts_ms, proofs });
        }
        if (flag, kind) == (SubFlag::Entries, MsgType::Whisper) {
            let v = p.value_refs().map_err(|_| Malformed("undecodable packets"))?;
            let Some(ValueRef::Array(list)) = v.first() else { return Err(Malformed("entry list")) };
            return Ok(SyncMessage::Entries(list.iter().filter_map(decode_entry).collect()));
        }
        let mut v = p.values().map_err(|_| Malformed("undecodable packets"))?;
        Ok(match (flag, kind) {
            (SubFlag::Store, MsgType::Whisper) => {
                if v.len() != 4 {
                    return Err(Malformed("state transfer field count"));
                }
                let (Some(key), Some(owner), Some(timestamp)) = (key_of(&v[0]), peer_id_of(&v[2]), v[3].as_u64())
                else {
                    return Err(Malformed("state transfer fields"));
                };
                SyncMessage::StateTransfer { key, value: v.swap_remove(1), owner, timestamp }
            }

            (SubFlag::Digest, MsgType::Whisper) => match v.first().and_then(Value::as_u64) {
                Some(0) => SyncMessage::Digest(Digest::Top(v.get(1).and_then(unpack).ok_or(Malformed("digest size"))?)),
                Some(1) => {
                    let list = v.get(1).and_then(Value::as_array).ok_or(Malformed("leaf digest list"))?;
                    let leaves = list
                        .iter()
                        .take(DIGEST_BUCKETS)
                        .filter_map(|item| {
                            let pair = item.as_array().filter(|p| p.len() == 2)?;
                            let bucket = u8::try_from(pair[0].as_u64()?).ok()?;
                            Some((bucket, unpack(&pair[1])?))
                        })
                        .collect();
                    SyncMessage::Digest(Digest::Leaves(leaves))
                }
                _ => return Err(Malformed("digest level")),
            },
            _ => return Err(Malformed("not a sync message")),
        })
    }

    /// The message as a frame from `sender` at `time` (UNIX seconds).
    pub fn encode(&self, sender: &PeerId, time: u64) -> Frame {
        match self {
            SyncMessage::Store { key, value, ts_ms, proof } => {
                Self::encode_store(sender, time, key, value, *ts_ms, proof.as_slice())
            }
            SyncMessage::StateTransfer { key, value, owner, timestamp } => {
                let mut b = FrameBuilder::new(MsgType::Whisper, sender, time, SubFlag::Store, 4);
                b.bin(key).value(value).bin(owner.as_bytes()).uint(*timestamp);
                b.finish()
            }
            SyncMessage::Delta { key, fields, ts_ms, proofs } => {
                Self::encode_delta(sender, time, key, fields, *ts_ms, proofs)
            }
            SyncMessage::Digest(Digest::Top(top)) => {
                let mut b = FrameBuilder::new(MsgType::Whisper, sender, time, SubFlag::Digest, 2);
                b.uint(0);
                pack(&mut b, top);
                b.finish()
            }
            SyncMessage::Digest(Digest::Leaves(leaves)) => {
                let mut b = FrameBuilder::new(MsgType::Whisper, sender, time, SubFlag::Digest, 2);
                b.uint(1).array_len(leaves.len());
                for (bucket, digests) in leaves {
                    b.array_len(2).uint(u64::from(*bucket));
                    pack(&mut b, digests);
                }
                b.finish()
            }
            SyncMessage::Entries(entries) => {
                let mut b = FrameBuilder::new(MsgType::Whisper, sender, time, SubFlag::Entries, 1);
                b.array_len(entries.len());
                for e in entries {
                    b.array_len(if e.holdings.is_empty() { 4 } else { 5 }).bin(&e.key);
                    b.array_len(2 + usize::from(e.base_proof.is_some())).uint(e.base_ts_ms).bin(&e.base_owner);
                    if let Some(p) = &e.base_proof {
                        put_proof(&mut b, p);
                    }
                    b.value(&e.base).array_len(e.fields.len());
                    for f in &e.fields {
                        b.array_len(4 + usize::from(f.proof.is_some()));
                        b.value(&f.key).uint(f.ts_ms).bin(f.owner.as_bytes()).value(&f.value);
                        if let Some(p) = &f.proof {
                            put_proof(&mut b, p);
                        }
                    }
                    if !e.holdings.is_empty() {
                        b.value(&holdings_value(&e.holdings));
                    }
                }
                b.finish()
            }
        }
    }

    /// [`SyncMessage::Store`] from borrowed parts (a local write need not
    /// copy its value into a message first).
    pub fn encode_store(
        sender: &PeerId,
        time: u64,
        key: &[u8],
        value: &Value,
        ts_ms: Option<u64>,
        proof: &[Arc<WriteProof>],
    ) -> Frame {
        let mut b =
            FrameBuilder::new(MsgType::Broadcast, sender, time, SubFlag::Store, 2 + usize::from(ts_ms.is_some()));
        b.bin(key).value(value);
        if let Some(ts) = ts_ms {
            put_ext(&mut b, ts, proof);
        }
        b.finish()
    }

    /// [`SyncMessage::Delta`] from borrowed parts.
    pub fn encode_delta(
        sender: &PeerId,
        time: u64,
        key: &[u8],
        fields: &[(Value, Value)],
        ts_ms: Option<u64>,
        proofs: &[Arc<WriteProof>],
    ) -> Frame {
        let mut b =
            FrameBuilder::new(MsgType::Broadcast, sender, time, SubFlag::Delta, 2 + usize::from(ts_ms.is_some()));
        b.bin(key);
        b.map_len(fields.len());
        for (k, v) in fields {
            b.value(k).value(v);
        }
        if let Some(ts) = ts_ms {
            put_ext(&mut b, ts, proofs);
        }
        b.finish()
    }
}

// Records are read from borrowed values: a record's keys, ids and proofs
// are copied once into their own types, with no owned value in between.

fn ref_bytes<'a>(v: &'a ValueRef<'_>) -> Option<&'a [u8]> {
    match v {
        ValueRef::Binary(b) => Some(b),
        ValueRef::String(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn ref_array<'a, 'b>(v: &'b ValueRef<'a>) -> Option<&'b [ValueRef<'a>]> {
    match v {
        ValueRef::Array(a) => Some(a),
        _ => None,
    }
}

fn ref_peer_id(v: &ValueRef<'_>) -> Option<PeerId> {
    ref_bytes(v).and_then(PeerId::from_wire)
}

fn decode_proof(v: &ValueRef<'_>) -> Option<Arc<WriteProof>> {
    let [key, sig, index, path, content] = ref_array(v)? else { return None };
    decode_leaf_part(decode_root(key, sig)?, index, path, content)
}

fn decode_entry(v: &ValueRef<'_>) -> Option<EntryRecord> {
    let a = ref_array(v)?;
    let holdings = match a.len() {
        4 => Vec::new(),
        5 => ref_array(&a[4])?.iter().map(decode_holding).collect::<Option<Vec<_>>>()?,
        _ => return None,
    };
    let key = Bytes::copy_from_slice(ref_bytes(&a[0])?);
    let (base_ts_ms, base_owner, base_proof) = decode_base_version(&a[1])?;
    let fields = decode_fields(&a[3])?;
    Some(EntryRecord { key, base_ts_ms, base_owner, base_proof, base: a[2].to_owned(), fields, holdings })
}

fn decode_base_version(v: &ValueRef<'_>) -> Option<(u64, Bytes, Proof)> {
    let bv = ref_array(v).filter(|b| b.len() == 2 || b.len() == 3)?;
    // The base of an entry created by a delta is the zero version with an
    // empty owner: the one place an empty owner is allowed.
    let base_owner = ref_bytes(&bv[1]).filter(|b| b.is_empty() || PeerId::valid_len(b.len()))?;
    let proof = match bv.get(2) {
        Some(p) => Some(decode_proof(p)?),
        None => None,
    };
    Some((bv[0].as_u64()?, Bytes::copy_from_slice(base_owner), proof))
}

fn decode_fields(v: &ValueRef<'_>) -> Option<Vec<FieldRecord>> {
    ref_array(v)?
        .iter()
        .map(|f| {
            let f = ref_array(f)?;
            let proof = match f.len() {
                4 => None,
                5 => Some(decode_proof(&f[4])?),
                _ => return None,
            };
            Some(FieldRecord {
                key: f[0].to_owned(),
                ts_ms: f[1].as_u64()?,
                owner: ref_peer_id(&f[2])?,
                value: f[3].to_owned(),
                proof,
            })
        })
        .collect()
}

fn decode_holding(v: &ValueRef<'_>) -> Option<HoldingRecord> {
    let a = ref_array(v)?;
    let start_proof = match a.len() {
        6 => None,
        7 => Some(decode_proof(&a[6])?),
        _ => return None,
    };
    let (start_ms, end_ms) = (a[1].as_u64()?, a[2].as_u64()?);
    if start_ms > end_ms {
        return None;
    }
    let (base_ts_ms, base_owner, base_proof) = decode_base_version(&a[3])?;
    Some(HoldingRecord {
        owner: ref_peer_id(&a[0])?,
        start_ms,
        end_ms,
        base_ts_ms,
        base_owner,
        base_proof,
        base: a[4].to_owned(),
        fields: decode_fields(&a[5])?,
        start_proof,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Limits;

    fn round_trip(m: SyncMessage) {
        let sender = PeerId::random(b"s");
        let p = Packet::parse(m.encode(&sender, 1_700_000_000), &Limits::default()).unwrap();
        assert_eq!(SyncMessage::decode(&p), Ok(m));
    }

    #[test]
    fn every_sync_message_round_trips() {
        let owner = PeerId::random(b"o");
        let key = Bytes::from_static(b"k");
        round_trip(SyncMessage::Store { key: key.clone(), value: Value::from("v"), ts_ms: None, proof: None });
        round_trip(SyncMessage::Store {
            key: key.clone(),
            value: Value::Nil,
            ts_ms: Some(1_700_000_000_123),
            proof: None,
        });
        let root = Arc::new(SignedRoot { public_key: [1; 32], signature: [2; 64] });
        let proof = |i: u32| {
            let path = PathNodes::Own(vec![[3; 16], [4; 16]].into_boxed_slice());
            Arc::new(WriteProof { root: root.clone(), index: i, path, content: [5; 16] })
        };
        round_trip(SyncMessage::Store {
            key: key.clone(),
            value: Value::from("v"),
            ts_ms: Some(1_700_000_000_123),
            proof: Some(proof(2)),
        });
        round_trip(SyncMessage::StateTransfer {
            key: key.clone(),
            value: Value::from(1),
            owner: owner.clone(),
            timestamp: 9,
        });
        let fields = vec![(Value::from("a"), Value::from(1)), (Value::from("b"), Value::Nil)];
        round_trip(SyncMessage::Delta { key: key.clone(), fields: fields.clone(), ts_ms: Some(5), proofs: Vec::new() });
        round_trip(SyncMessage::Delta {
            key: key.clone(),
            fields: fields.clone(),
            ts_ms: Some(5),
            proofs: vec![proof(0), proof(1)],
        });
        round_trip(SyncMessage::Delta { key: key.clone(), fields: Vec::new(), ts_ms: None, proofs: Vec::new() });
        round_trip(SyncMessage::Digest(Digest::Top((0..256).collect())));
        round_trip(SyncMessage::Digest(Digest::Leaves(vec![(3, (0..256).rev().collect())])));
        let rec = EntryRecord {
            key: Bytes::from_static(b"k"),
            base_ts_ms: 5,
            base_owner: Bytes::from_static(b"owner"),
            base_proof: Some(proof(1)),
            base: Value::from("v"),
            fields: vec![FieldRecord {
                key: Value::from("f"),
                ts_ms: 6,
                owner: PeerId::from_bytes(&b"other"[..]),
                value: Value::from(1),
                proof: Some(proof(3)),
            }],
            holdings: Vec::new(),
        };
        assert_eq!(EntryRecord::from_bytes(&rec.to_bytes()), Some(rec.clone()));
        let leased = EntryRecord {
            holdings: vec![HoldingRecord {
                owner: owner.clone(),
                start_ms: 3,
                end_ms: 5,
                base_ts_ms: 5,
                base_owner: Bytes::copy_from_slice(owner.as_bytes()),
                base_proof: None,
                base: Value::from("v"),
                fields: Vec::new(),
                start_proof: Some(proof(0)),
            }],
            ..rec.clone()
        };
        assert_eq!(EntryRecord::from_bytes(&leased.to_bytes()), Some(leased.clone()));
        round_trip(SyncMessage::Entries(vec![leased.clone()]));
        // A holding that ends before it starts is not one.
        let mut backwards = leased.clone();
        backwards.holdings[0].start_ms = 6;
        assert_eq!(EntryRecord::from_bytes(&backwards.to_bytes()), None);
        let mut longer = rec.to_bytes();
        longer.push(0);
        assert_eq!(EntryRecord::from_bytes(&longer), None);
        assert_eq!(EntryRecord::from_bytes(&rec.to_bytes()[..5]), None);
        round_trip(SyncMessage::Entries(vec![EntryRecord {
            key,
            base_ts_ms: 0,
            base_owner: Bytes::new(),
            base_proof: None,
            base: Value::Nil,
            fields: vec![FieldRecord { key: Value::from("f"), ts_ms: 7, owner, value: Value::from(2), proof: None }],
            holdings: Vec::new(),
        }]));
    }

    #[test]
    fn wrong_shapes_are_malformed() {
        let s = PeerId::random(b"s");
        let parse =
            |t, f: SubFlag, v: &[Value]| Packet::parse(Frame::build(t, &s, 1, f, v), &Limits::default()).unwrap();
        let cases = [
            parse(MsgType::Broadcast, SubFlag::Store, &[Value::from("k")]),
            parse(MsgType::Whisper, SubFlag::Store, &[Value::from("k"), Value::Nil, Value::Nil]),
            parse(MsgType::Broadcast, SubFlag::Delta, &[Value::from("k"), Value::from(1)]),
            parse(MsgType::Whisper, SubFlag::Digest, &[Value::from(0), Value::Binary(vec![0; 7])]),
            parse(MsgType::Whisper, SubFlag::Entries, &[Value::from(1)]),
            parse(MsgType::Whisper, SubFlag::Delta, &[Value::from("k"), Value::Map(vec![])]),
            parse(MsgType::Broadcast, SubFlag::Broadcast, &[]),
        ];
        for p in cases {
            assert!(SyncMessage::decode(&p).is_err(), "{p:?}");
        }
    }
}
