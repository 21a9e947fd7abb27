//! Anti-entropy between rs2p replicas: digests compared top-down, then the
//! entries of the leaves that differ.
//!
//! Keys hash into 65,536 leaf buckets, 256 at the top level; each bucket's
//! digest is the XOR of its entries' digests. A round: one side sends its
//! 256 top digests ([`Digest::Top`]); the other answers each differing top
//! bucket with its 256 leaf digests ([`Digest::Leaves`]); the first then
//! sends the entries of the differing leaves. Each side does the same, so
//! both end with the union.
//!
//! Records come from a third party, so every write in them is checked
//! against its writer's proof (`proof.rs`) before it is merged ([`vet`]):
//! a write with a bad proof, or with none while its writer is known to
//! prove its writes, is refused, and so is a holding whose bounds its
//! writer did not sign. Writes of py2p nodes (never proven) are taken as
//! py2p takes them.
//!
//! [`vet`]: Replica::vet

use bytes::Bytes;
use rand::seq::IteratorRandom;
use rmpv::Value;

use std::collections::HashSet;
use std::sync::Arc;

use super::proof::{self, content_hash, Content};
use super::{Entry, Output, Replica, LEAF_BUCKETS, TOP_BUCKETS};
use crate::id::PeerId;
use crate::mesh::ConnId;
use crate::wire::message::{Digest, EntryRecord, FieldRecord, HoldingRecord, Proof, SyncMessage, TreeNode, WriteProof};
use crate::Now;

/// Leaf digests per message: a quarter of the top buckets.
const LEAF_LISTS_PER_MESSAGE: usize = 64;

impl Replica {
    fn whisper(&mut self, conn: ConnId, msg: &SyncMessage) {
        let frame = msg.encode(&self.me, self.clock_ms / 1000);
        self.out.push_back(Output::Send { conn, frame });
    }

    /// Whether entries from `conn` arrived within the last anti-entropy
    /// interval.
    fn transfer_under_way(&self, now: Now, conn: ConnId) -> bool {
        self.receiving_from.get(&conn).is_some_and(|&t| now.mono_ms < t + self.cfg.anti_entropy_interval_ms)
    }

    /// Starts a round with a random rs2p peer not already sending to us.
    pub(super) fn start_round(&mut self, now: Now) {
        let idle: Vec<ConnId> =
            self.peers.iter().filter(|&(&c, &r)| r && !self.transfer_under_way(now, c)).map(|(c, _)| *c).collect();
        if let Some(conn) = idle.into_iter().choose(&mut self.rng) {
            self.stats.anti_entropy_rounds += 1;
            tracing::debug!(conn = conn.0, keys = self.live, "anti-entropy round");
            self.send_top_digest(conn);
        }
    }

    pub(super) fn send_top_digest(&mut self, conn: ConnId) {
        self.whisper(conn, &SyncMessage::Digest(Digest::Top(self.top.clone())));
    }

    pub(super) fn on_digest(&mut self, now: Now, conn: ConnId, d: Digest) {
        match d {
            // A new round from a peer whose entries are still arriving:
            // answering would make it resend them. Its next round will do.
            Digest::Top(_) if self.transfer_under_way(now, conn) => {}
            Digest::Top(theirs) => {
                let replies: Vec<(u8, Vec<u64>)> = (0..TOP_BUCKETS)
                    .filter(|&b| theirs[b] != self.top[b])
                    .map(|b| (b as u8, self.leaf[b * TOP_BUCKETS..(b + 1) * TOP_BUCKETS].to_vec()))
                    .collect();
                for chunk in replies.chunks(LEAF_LISTS_PER_MESSAGE) {
                    self.whisper(conn, &SyncMessage::Digest(Digest::Leaves(chunk.to_vec())));
                }
            }
            Digest::Leaves(lists) => {
                let mut leaves = Vec::new();
                for (b, theirs) in lists {
                    for (s, their) in theirs.iter().enumerate() {
                        let leaf = usize::from(b) * TOP_BUCKETS + s;
                        if self.leaf[leaf] != *their {
                            leaves.push(leaf as u16);
                        }
                    }
                }
                self.send_leaves(conn, &leaves);
            }
        }
    }

    fn send_leaves(&mut self, conn: ConnId, leaves: &[u16]) {
        if leaves.is_empty() {
            return;
        }
        let mut batch = Vec::new();
        let mut size = 0;
        let mut batches = Vec::new();
        // One pass over the entries, whatever the number of leaves asked.
        let mut wanted = vec![false; LEAF_BUCKETS];
        for &leaf in leaves {
            wanted[usize::from(leaf)] = true;
        }
        for (k, s) in self.entries.iter().filter(|(_, s)| wanted[usize::from(s.leaf)]) {
            size += k.len() + 64 + approx_size(&s.entry.base) + PROOF_BYTES * proofs_in(&s.entry);
            batch.push(s.entry.to_record(k));
            if size >= self.cfg.max_batch_bytes {
                batches.push(std::mem::take(&mut batch));
                size = 0;
            }
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        for b in batches {
            self.whisper(conn, &SyncMessage::Entries(b));
        }
    }

    pub(super) fn on_entries(&mut self, now: Now, records: Vec<EntryRecord>) {
        let cutoff = now.unix_ms.saturating_sub(self.cfg.tombstone_ttl_ms);
        self.check_batches(&records);
        for rec in records {
            let Some(rec) = self.vet(now, rec) else { continue };
            let (key, remote) = self.entry_from_record(rec);
            // A tombstone older than the purge horizon is already forgotten
            // here; taking it back would only be purged again.
            if remote.is_tombstone() && remote.base_version.ts_ms < cutoff && self.slot(&key).is_none() {
                continue;
            }
            self.observe(remote.latest());
            self.merge_entry(key, &remote);
        }
    }

    /// A record with its writes checked (see the module docs): forged
    /// writes and holdings are taken out and counted; `None` if nothing is
    /// left. A replica without leases merges the record's base and fields
    /// and drops its holdings; one with leases merges the holdings, from
    /// which it derives the value itself.
    pub(super) fn vet(&mut self, now: Now, mut rec: EntryRecord) -> Option<EntryRecord> {
        let key = rec.key.clone();
        if !self.cfg.leasing {
            rec.holdings.clear();
        }
        if !rec.holdings.is_empty() {
            let holdings = std::mem::take(&mut rec.holdings);
            for h in holdings {
                if let Some(h) = self.vet_holding(now, &key, h) {
                    rec.holdings.push(h);
                }
            }
            return (!rec.holdings.is_empty()).then_some(rec);
        }
        if !rec.base_owner.is_empty() {
            let owner = PeerId::from_bytes(rec.base_owner.clone());
            let content = content_hash(Content::Set(&rec.base));
            match self.vet_write(now, &key, &owner, rec.base_ts_ms, &content, rec.base_proof.take()) {
                Some(p) => rec.base_proof = p,
                None => (rec.base_ts_ms, rec.base_owner, rec.base) = (0, Bytes::new(), Value::Nil),
            }
        }
        rec.fields = self.vet_fields(now, &key, std::mem::take(&mut rec.fields)).unwrap_or_else(|kept| kept);
        (!rec.base_owner.is_empty() || !rec.fields.is_empty()).then_some(rec)
    }

    /// Checks at once the signatures of the write batches the records'
    /// proofs claim, one proof per batch (records from a big transfer come
    /// from many batches): [`Replica::vet`] then finds them checked.
    fn check_batches(&mut self, records: &[EntryRecord]) {
        let mut seen: HashSet<[u8; 64]> = HashSet::new();
        let mut claims: Vec<(PeerId, TreeNode, Arc<WriteProof>)> = Vec::new();
        let checker = &self.checker;
        // Only the first proof of each batch not checked yet is hashed here.
        let mut claim = |key: &[u8], owner: &[u8], ts: u64, proof: &Proof, content: &dyn Fn() -> TreeNode| {
            let new =
                |p: &&Arc<WriteProof>| !checker.knows_signature(&p.root.signature) && !seen.contains(&p.root.signature);
            let Some(p) = proof.as_ref().filter(new) else { return };
            if content() == p.content {
                seen.insert(p.root.signature);
                let owner = PeerId::from_bytes(Bytes::copy_from_slice(owner));
                claims.push((owner.clone(), proof::leaf(key, &owner, ts, &p.content), p.clone()));
            }
        };
        for rec in records {
            let key = &rec.key;
            claim(key, &rec.base_owner, rec.base_ts_ms, &rec.base_proof, &|| content_hash(Content::Set(&rec.base)));
            for f in &rec.fields {
                claim(key, f.owner.as_bytes(), f.ts_ms, &f.proof, &|| content_hash(Content::Field(&f.key, &f.value)));
            }
            for h in &rec.holdings {
                claim(key, &h.base_owner, h.base_ts_ms, &h.base_proof, &|| content_hash(Content::Set(&h.base)));
                for f in &h.fields {
                    claim(key, f.owner.as_bytes(), f.ts_ms, &f.proof, &|| {
                        content_hash(Content::Field(&f.key, &f.value))
                    });
                }
                if let Some(p) = &h.start_proof {
                    claim(key, h.owner.as_bytes(), h.start_ms, &h.start_proof, &|| p.content);
                }
            }
        }
        self.checker.check_roots(claims.iter().map(|(o, l, p)| (o, *l, p)));
    }

    /// One write of a record, checked: the proof to keep, or `None` (the
    /// write refused, counted and logged).
    fn vet_write(
        &mut self,
        now: Now,
        key: &[u8],
        owner: &PeerId,
        ts_ms: u64,
        content: &TreeNode,
        proof: Proof,
    ) -> Option<Proof> {
        self.check_write(key, owner, ts_ms, content, proof, false)
            .map_err(|why| self.forged(now, key, owner.as_bytes(), why))
            .ok()
    }

    /// The fields whose writes check: `Ok` if all did, `Err` with those
    /// that did otherwise.
    fn vet_fields(
        &mut self,
        now: Now,
        key: &[u8],
        fields: Vec<FieldRecord>,
    ) -> Result<Vec<FieldRecord>, Vec<FieldRecord>> {
        let mut kept = Vec::with_capacity(fields.len());
        let mut all = true;
        for mut f in fields {
            let content = content_hash(Content::Field(&f.key, &f.value));
            match self.vet_write(now, key, &f.owner, f.ts_ms, &content, f.proof.take()) {
                Some(p) => {
                    f.proof = p;
                    kept.push(f);
                }
                None => all = false,
            }
        }
        if all {
            Ok(kept)
        } else {
            Err(kept)
        }
    }

    /// A holding whose writes all check and, for a writer known to prove
    /// its writes, whose bounds are its own: it ends at its latest write,
    /// and starts at a write its writer signed. A holding failing any of
    /// this is refused whole (a partial one would claim other bounds).
    fn vet_holding(&mut self, now: Now, key: &[u8], mut h: HoldingRecord) -> Option<HoldingRecord> {
        if !h.base_owner.is_empty() {
            let owner = PeerId::from_bytes(h.base_owner.clone());
            let content = content_hash(Content::Set(&h.base));
            h.base_proof = self.vet_write(now, key, &owner, h.base_ts_ms, &content, h.base_proof.take())?;
        }
        h.fields = self.vet_fields(now, key, std::mem::take(&mut h.fields)).ok()?;
        if let Some(p) = h.start_proof.take() {
            h.start_proof = self.vet_write(now, key, &h.owner, h.start_ms, &p.content.clone(), Some(p))?;
        }
        if self.cfg.require_proofs || self.is_keyed(&h.owner) {
            let base = (!h.base_owner.is_empty()).then(|| (h.base_ts_ms, h.base_owner.as_ref()));
            let writes = base.into_iter().chain(h.fields.iter().map(|f| (f.ts_ms, f.owner.as_bytes())));
            let (mut last, mut ends) = (0, false);
            for (ts, owner) in writes {
                last = last.max(ts);
                ends |= ts == h.end_ms && owner == h.owner.as_bytes();
            }
            let why = if !ends || last > h.end_ms {
                Some("a holding that does not end at its writer's latest write")
            } else if h.start_ms < h.end_ms && h.start_proof.is_none() {
                Some("a holding whose start its writer did not sign")
            } else {
                None
            };
            if let Some(why) = why {
                self.forged(now, key, h.owner.as_bytes(), why);
                return None;
            }
        }
        Some(h)
    }

    /// An entry from the network, its owners interned.
    pub(super) fn entry_from_record(&mut self, rec: EntryRecord) -> (Bytes, Entry) {
        let (key, mut e) = Entry::from_record(rec);
        e.base_version.owner = self.intern(&e.base_version.owner);
        for f in &mut e.fields {
            f.version.owner = self.intern(&f.version.owner);
        }
        match e.holdings.as_deref_mut() {
            None => {}
            Some(super::Holdings::One { owner, .. }) => *owner = self.intern(owner),
            Some(super::Holdings::Many(hs)) => {
                for h in hs {
                    h.owner = self.intern(&h.owner);
                    h.writes.base_version.owner = self.intern(&h.writes.base_version.owner);
                    for f in &mut h.writes.fields {
                        f.version.owner = self.intern(&f.version.owner);
                    }
                }
            }
        }
        (key, e)
    }
}

/// About what one proof adds to a record (key, signature, a path of 8).
const PROOF_BYTES: usize = 250;

/// The proofs an entry's record carries.
fn proofs_in(e: &Entry) -> usize {
    let mut n = 0;
    e.for_each_proof(&mut |_, _| n += 1);
    n
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
