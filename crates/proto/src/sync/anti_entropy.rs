//! Anti-entropy between rs2p replicas: digests compared top-down, then the
//! entries of the leaves that differ.
//!
//! Keys hash into 65,536 leaf buckets, 256 at the top level; each bucket's
//! digest is the XOR of its entries' digests. A round: one side sends its
//! 256 top digests ([`Digest::Top`]); the other answers each differing top
//! bucket with its 256 leaf digests ([`Digest::Leaves`]); the first then
//! sends the entries of the differing leaves. Each side does the same, so
//! both end with the union.

use bytes::Bytes;
use rand::seq::IteratorRandom;
use rmpv::Value;

use super::{Entry, Output, Replica, LEAF_BUCKETS, TOP_BUCKETS};
use crate::mesh::ConnId;
use crate::wire::message::{Digest, EntryRecord, SyncMessage};
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
            size += k.len() + 64 + approx_size(&s.entry.base);
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
        for rec in records {
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

fn approx_size(v: &Value) -> usize {
    match v {
        Value::String(s) => s.as_bytes().len(),
        Value::Binary(b) => b.len(),
        Value::Array(a) => a.iter().map(approx_size).sum::<usize>() + 1,
        Value::Map(m) => m.iter().map(|(k, v)| approx_size(k) + approx_size(v)).sum::<usize>() + 1,
        _ => 9,
    }
}
