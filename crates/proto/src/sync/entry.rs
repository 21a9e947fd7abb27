//! One key's replicated state, and the rules that order and merge writes.

use std::cmp::Ordering;
use std::fmt;

use bytes::Bytes;
use rmpv::Value;
use sha2::{Digest, Sha256};

use super::lease::{Holding, Holdings};
use crate::id::PeerId;
use crate::wire::message::{EntryRecord, FieldRecord, HoldingRecord, Proof};
use crate::wire::msgpack::write_value;

/// A write's proof (`proof.rs`), kept beside it. It takes no part in
/// comparing versions or entries: two replicas that hold the same write,
/// one with its proof and one without, hold the same state.
#[derive(Clone, Default)]
pub struct ProofSlot(pub Proof);

impl PartialEq for ProofSlot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ProofSlot {}

impl std::hash::Hash for ProofSlot {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl fmt::Debug for ProofSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "proven" } else { "unproven" })
    }
}

impl ProofSlot {
    /// Whether the write has a proof.
    pub fn is_some(&self) -> bool {
        self.0.is_some()
    }
}

/// When and by whom a write was made. Versions are totally ordered
/// ([`Version::cmp`]), so every replica picks the same winner among
/// concurrent writes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    /// Milliseconds since the UNIX epoch (a hybrid clock: never behind the
    /// versions its writer had seen for the key). py2p writes have second
    /// resolution: their `timestamp * 1000`.
    pub ts_ms: u64,
    /// The writer.
    pub owner: PeerId,
    /// The writer's proof of the write, when it has one.
    pub proof: ProofSlot,
}

impl Version {
    /// A version (without proof).
    pub fn new(ts_ms: u64, owner: PeerId) -> Self {
        Version { ts_ms, owner, proof: ProofSlot::default() }
    }

    /// A version with its proof.
    pub fn proven(ts_ms: u64, owner: PeerId, proof: Proof) -> Self {
        Version { ts_ms, owner, proof: ProofSlot(proof) }
    }

    /// py2p's second-resolution timestamp.
    pub fn secs(&self) -> u64 {
        self.ts_ms / 1000
    }
}

impl Ord for Version {
    /// Later timestamps win; on equal timestamps the *smaller* owner id
    /// (bytes compared as py2p compares them) wins, which is py2p's own
    /// tie rule (`meta.timestamp == new.timestamp and meta.owner >
    /// new.owner` lets the new write in).
    fn cmp(&self, other: &Self) -> Ordering {
        self.ts_ms.cmp(&other.ts_ms).then_with(|| other.owner.as_bytes().cmp(self.owner.as_bytes()))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Orders two (version, value) writes: by version, and for the same
/// version (two writes of one py2p node within a second) by the bytes of the
/// value, so the order is total.
pub fn write_order(a: (&Version, &Value), b: (&Version, &Value)) -> Ordering {
    a.0.cmp(b.0).then_with(|| encode(a.1).cmp(&encode(b.1)))
}

fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_value(&mut out, v);
    out
}

/// One field set by a delta, with its own version.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The field's key within the map.
    pub key: Value,
    /// The delta that set it.
    pub version: Version,
    /// Its value.
    pub value: Value,
}

/// The replicated state of one key: a last-writer-wins register for whole
/// values (sets and deletes), with per-field last-writer-wins entries on top
/// for deltas. Merging two entries is commutative, associative and
/// idempotent, so replicas that saw the same writes in any order agree.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The latest set or delete.
    pub base_version: Version,
    /// Its value; `Nil` is a delete (a tombstone).
    pub base: Value,
    /// Fields set by deltas newer than the base, sorted by encoded key.
    pub fields: Vec<Field>,
    /// Under leases: every holding of the key, from which the base and
    /// fields above are derived (see the sync module's `lease.rs`). `None`
    /// without leases, and for the register inside a holding.
    pub holdings: Option<Box<Holdings>>,
}

impl Entry {
    /// An entry holding one set (or delete, if `value` is nil).
    pub fn new(version: Version, value: Value) -> Self {
        Entry { base_version: version, base: value, fields: Vec::new(), holdings: None }
    }

    /// Whether the entry is a tombstone (deleted, no newer delta).
    pub fn is_tombstone(&self) -> bool {
        self.base.is_nil() && self.fields.is_empty()
    }

    /// The newest version anywhere in the entry: the key's owner and
    /// timestamp, as py2p's metadata reports them.
    pub fn latest(&self) -> &Version {
        self.fields.iter().map(|f| &f.version).fold(&self.base_version, |a, b| if b > a { b } else { a })
    }

    /// The value a reader sees: `None` for a tombstone; the base overlaid
    /// with the delta fields otherwise. A delta over a value that is not a
    /// map replaces it with a map of the delta fields.
    pub fn value(&self) -> Option<Value> {
        if self.fields.is_empty() {
            return (!self.base.is_nil()).then(|| self.base.clone());
        }
        let mut map: Vec<(Value, Value)> = match &self.base {
            Value::Map(m) => m.clone(),
            _ => Vec::new(),
        };
        for f in &self.fields {
            match map.iter_mut().find(|(k, _)| *k == f.key) {
                Some(slot) => slot.1 = f.value.clone(),
                None => map.push((f.key.clone(), f.value.clone())),
            }
        }
        Some(Value::Map(map))
    }

    /// Applies a set (or a delete, `Nil`) with `version`. Returns whether
    /// the entry changed.
    pub fn apply_set(&mut self, version: &Version, value: &Value) -> bool {
        match write_order((version, value), (&self.base_version, &self.base)) {
            Ordering::Greater => {}
            Ordering::Equal => {
                // The same write: keep a proof if this copy brings one.
                if !self.base_version.proof.is_some() && version.proof.is_some() {
                    self.base_version.proof = version.proof.clone();
                }
                return false;
            }
            Ordering::Less => return false,
        }
        self.base_version = version.clone();
        self.base = value.clone();
        let base = &self.base_version;
        self.fields.retain(|f| f.version > *base);
        true
    }

    /// Applies a delta's fields with `version`. Fields older than the base
    /// (a later set replaced the whole value) or than the field's current
    /// version are ignored. Returns whether anything changed.
    pub fn apply_delta(&mut self, version: &Version, delta: &[(Value, Value)]) -> bool {
        if *version <= self.base_version {
            return false;
        }
        let mut changed = false;
        for (k, v) in delta {
            let ek = encode(k);
            match self.fields.binary_search_by(|f| encode(&f.key).cmp(&ek)) {
                Ok(i) => {
                    let f = &mut self.fields[i];
                    match write_order((version, v), (&f.version, &f.value)) {
                        Ordering::Greater => {
                            f.version = version.clone();
                            f.value = v.clone();
                            changed = true;
                        }
                        Ordering::Equal if !f.version.proof.is_some() => f.version.proof = version.proof.clone(),
                        _ => {}
                    }
                }
                Err(i) => {
                    self.fields.insert(i, Field { key: k.clone(), version: version.clone(), value: v.clone() });
                    changed = true;
                }
            }
        }
        changed
    }

    /// Merges another replica's entry for the same key into this one.
    pub fn merge(&mut self, other: &Entry) -> bool {
        let mut changed = self.apply_set(&other.base_version, &other.base);
        for f in &other.fields {
            changed |= self.apply_delta(&f.version, &[(f.key.clone(), f.value.clone())]);
        }
        changed
    }

    /// Runs `f` on every proof the entry keeps (its holdings' too), with
    /// the writer it proves.
    pub(crate) fn for_each_proof(&self, f: &mut impl FnMut(&PeerId, &crate::wire::message::WriteProof)) {
        if let Some(p) = &self.base_version.proof.0 {
            f(&self.base_version.owner, p);
        }
        for field in &self.fields {
            if let Some(p) = &field.version.proof.0 {
                f(&field.version.owner, p);
            }
        }
        match self.holdings.as_deref() {
            None => {}
            Some(Holdings::One { owner, start, .. }) => {
                if let Some(p) = &start.0 {
                    f(owner, p);
                }
            }
            Some(Holdings::Many(hs)) => {
                for h in hs {
                    if let Some(p) = &h.start.0 {
                        f(&h.owner, p);
                    }
                    h.writes.for_each_proof(f);
                }
            }
        }
    }

    /// Runs `f` on every proof the entry keeps (its holdings' too).
    pub(crate) fn proofs_mut(&mut self, f: &mut impl FnMut(&mut std::sync::Arc<crate::wire::message::WriteProof>)) {
        if let Some(p) = self.base_version.proof.0.as_mut() {
            f(p);
        }
        for field in &mut self.fields {
            if let Some(p) = field.version.proof.0.as_mut() {
                f(p);
            }
        }
        match self.holdings.as_deref_mut() {
            None => {}
            Some(Holdings::One { start, .. }) => {
                if let Some(p) = start.0.as_mut() {
                    f(p);
                }
            }
            Some(Holdings::Many(hs)) => {
                for h in hs {
                    if let Some(p) = h.start.0.as_mut() {
                        f(p);
                    }
                    h.writes.proofs_mut(f);
                }
            }
        }
    }

    /// A digest of the entry's versions (and values), for anti-entropy.
    pub fn digest(&self, key: &[u8]) -> u64 {
        let mut h = Sha256::new();
        h.update((key.len() as u64).to_be_bytes());
        h.update(key);
        fn put(h: &mut Sha256, v: &Version, val: &Value) {
            h.update(v.ts_ms.to_be_bytes());
            h.update((v.owner.as_bytes().len() as u64).to_be_bytes());
            h.update(v.owner.as_bytes());
            // Encoded straight into the hasher: no buffer per digest.
            rmpv::encode::write_value(h, val).expect("hashing cannot fail");
        }
        put(&mut h, &self.base_version, &self.base);
        for f in &self.fields {
            put(&mut h, &f.version, &f.value);
        }
        // Under leases, replicas that agree on the value may still hold
        // different holdings (a refused one): anti-entropy must see that.
        let span = |h: &mut Sha256, owner: &PeerId, start: u64, end: u64| {
            h.update(b"holding");
            h.update((owner.as_bytes().len() as u64).to_be_bytes());
            h.update(owner.as_bytes());
            h.update(start.to_be_bytes());
            h.update(end.to_be_bytes());
        };
        match self.holdings.as_deref() {
            None => {}
            Some(Holdings::One { owner, start_ms, end_ms, .. }) => span(&mut h, owner, *start_ms, *end_ms),
            Some(Holdings::Many(hs)) => {
                for hold in hs {
                    span(&mut h, &hold.owner, hold.start_ms, hold.end_ms);
                    put(&mut h, &hold.writes.base_version, &hold.writes.base);
                    for f in &hold.writes.fields {
                        put(&mut h, &f.version, &f.value);
                    }
                }
            }
        }
        let d = h.finalize();
        u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }

    /// The entry as anti-entropy sends it.
    pub fn to_record(&self, key: &Bytes) -> EntryRecord {
        EntryRecord {
            key: key.clone(),
            base_ts_ms: self.base_version.ts_ms,
            base_owner: Bytes::copy_from_slice(self.base_version.owner.as_bytes()),
            base_proof: self.base_version.proof.0.clone(),
            base: self.base.clone(),
            fields: field_records(&self.fields),
            holdings: self
                .holdings_for_record()
                .iter()
                .map(|h| HoldingRecord {
                    owner: h.owner.clone(),
                    start_ms: h.start_ms,
                    end_ms: h.end_ms,
                    base_ts_ms: h.writes.base_version.ts_ms,
                    base_owner: Bytes::copy_from_slice(h.writes.base_version.owner.as_bytes()),
                    base_proof: h.writes.base_version.proof.0.clone(),
                    base: h.writes.base.clone(),
                    fields: field_records(&h.writes.fields),
                    start_proof: h.start.0.clone(),
                })
                .collect(),
        }
    }

    /// An entry from the network. Its fields go through
    /// [`Entry::apply_delta`], so the invariants (sorted, newer than the
    /// base) hold whatever the sender sent. Holdings are taken as sent:
    /// the replica merges them into its own (`merge_leased`),
    /// which checks them.
    pub fn from_record(rec: EntryRecord) -> (Bytes, Entry) {
        let mut e = register(rec.base_ts_ms, rec.base_owner, rec.base_proof, rec.base, rec.fields);
        let mut hs: Vec<Holding> = rec
            .holdings
            .into_iter()
            .map(|h| Holding {
                owner: h.owner,
                start_ms: h.start_ms,
                end_ms: h.end_ms,
                start: ProofSlot(h.start_proof),
                writes: register(h.base_ts_ms, h.base_owner, h.base_proof, h.base, h.fields),
            })
            .collect();
        match hs.len() {
            0 => {}
            // One holding: its writes are the entry's.
            1 => {
                let h = hs.pop().expect("one");
                e = h.writes;
                e.holdings = Some(Box::new(Holdings::One {
                    owner: h.owner,
                    start_ms: h.start_ms,
                    end_ms: h.end_ms,
                    start: h.start,
                }));
            }
            _ => e.holdings = Some(Box::new(Holdings::Many(hs))),
        }
        (rec.key, e)
    }
}

fn register(base_ts_ms: u64, base_owner: Bytes, base_proof: Proof, base: Value, fields: Vec<FieldRecord>) -> Entry {
    let mut e = Entry::new(Version::proven(base_ts_ms, PeerId::from_bytes(base_owner), base_proof), base);
    for FieldRecord { key, ts_ms, owner, value, proof } in fields {
        e.apply_delta(&Version::proven(ts_ms, owner, proof), &[(key, value)]);
    }
    e
}

fn field_records(fields: &[Field]) -> Vec<FieldRecord> {
    fields
        .iter()
        .map(|f| FieldRecord {
            key: f.key.clone(),
            ts_ms: f.version.ts_ms,
            owner: f.version.owner.clone(),
            value: f.value.clone(),
            proof: f.version.proof.0.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ts: u64, owner: &str) -> Version {
        Version::new(ts, PeerId::from_bytes(owner.as_bytes().to_vec()))
    }

    #[test]
    fn version_order_table() {
        // (a, b, a > b)
        let cases = [
            (v(2000, "B"), v(1000, "A"), true),  // later wins
            (v(1000, "A"), v(2000, "B"), false), // earlier loses
            (v(1000, "A"), v(1000, "B"), true),  // tie: smaller owner wins (py2p)
            (v(1000, "B"), v(1000, "A"), false),
            (v(1000, "A"), v(1000, "A"), false), // equal
            (v(1001, "Z"), v(1000, "A"), true),  // a millisecond beats any owner
        ];
        for (a, b, gt) in cases {
            assert_eq!(a > b, gt, "{a:?} vs {b:?}");
        }
        // Same version, different values: ordered by value bytes.
        let x = Value::from("x");
        let y = Value::from("y");
        assert_eq!(write_order((&v(1, "A"), &y), (&v(1, "A"), &x)), Ordering::Greater);
        assert_eq!(write_order((&v(1, "A"), &x), (&v(1, "A"), &x)), Ordering::Equal);
    }

    #[test]
    fn set_delete_and_delta_rules() {
        let mut e = Entry::new(v(1000, "A"), Value::from("one"));
        assert!(!e.apply_set(&v(900, "B"), &Value::from("older")), "older set ignored");
        assert!(e.apply_set(&v(2000, "B"), &Value::Nil), "newer delete applies");
        assert!(e.is_tombstone());
        assert_eq!(e.value(), None);
        assert!(!e.apply_set(&v(1500, "A"), &Value::from("resurrect")), "tombstone blocks older writes");
        // A delta newer than the delete creates a map.
        assert!(e.apply_delta(&v(3000, "C"), &[(Value::from("a"), Value::from(1))]));
        assert_eq!(e.value(), Some(Value::Map(vec![(Value::from("a"), Value::from(1))])));
        // An older delta on the same field loses; a newer one wins.
        assert!(!e.apply_delta(&v(2500, "D"), &[(Value::from("a"), Value::from(9))]));
        assert!(e.apply_delta(&v(3500, "D"), &[(Value::from("a"), Value::from(2)), (Value::from("b"), Value::from(3))]));
        assert_eq!(e.latest(), &v(3500, "D"));
        // A set newer than the deltas replaces everything.
        assert!(e.apply_set(&v(4000, "A"), &Value::Map(vec![(Value::from("z"), Value::Nil)])));
        assert!(e.fields.is_empty());
        // A delta over a non-map replaces it with a map.
        let mut s = Entry::new(v(1, "A"), Value::from("text"));
        s.apply_delta(&v(2, "A"), &[(Value::from("k"), Value::from(true))]);
        assert_eq!(s.value(), Some(Value::Map(vec![(Value::from("k"), Value::Boolean(true))])));
        // A delta older than the base is ignored.
        assert!(!s.apply_delta(&v(1, "B"), &[(Value::from("q"), Value::Nil)]));
    }

    #[test]
    fn wire_round_trip() {
        let mut e = Entry::new(v(1000, "A"), Value::Map(vec![(Value::from("x"), Value::from(1))]));
        e.apply_delta(&v(2000, "B"), &[(Value::from("y"), Value::Binary(vec![1]))]);
        let key = Bytes::from_static(b"k");
        let (k, back) = Entry::from_record(e.to_record(&key));
        assert_eq!(k, key);
        assert_eq!(back, e);
        assert_eq!(back.digest(&k), e.digest(&k));
    }
}
