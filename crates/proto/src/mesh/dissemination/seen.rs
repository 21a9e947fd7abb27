//! The flood deduplication cache ("waterfalls" in py2p).

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};

use crate::id::MsgId;

/// Hashes a 64-bit prefix of a sha256 with a per-node random key: the ids
/// are already uniformly distributed, so a multiply-xor is enough, and the
/// key keeps a remote sender from aiming many ids at one bucket.
#[derive(Debug, Clone, Copy)]
struct KeyedIdHash(u64);

impl BuildHasher for KeyedIdHash {
    type Hasher = MixHasher;
    fn build_hasher(&self) -> MixHasher {
        MixHasher(self.0)
    }
}

/// A multiply-xor hasher for keys that are already well spread or not
/// chosen remotely: 64-bit id prefixes (keyed, see [`SeenCache`]) and the
/// driver's sequential connection ids ([`crate::mesh::ConnMap`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }
}

/// Remembers the ids of recently seen broadcasts, bounded both in time and
/// in count.
///
/// Entries expire a fixed time after they were inserted (monotonic clock),
/// which keeps the queue sorted and expiry O(1); when `capacity` is reached
/// the oldest entry goes first.
#[derive(Debug)]
pub struct SeenCache {
    // Ids are kept as their first 64 bits: 16 bytes per id in the queue and
    // 8 in the set instead of 32 and 16. A false "seen" needs two of the
    // 262,144 remembered ids to share 64 bits (about 2^-29 per window), and
    // aiming one at a future message means a 64-bit partial preimage of a
    // sha256 of bytes not yet known.
    set: HashSet<u64, KeyedIdHash>,
    order: VecDeque<(u64, u64)>,
    keep_ms: u64,
    capacity: usize,
}

impl SeenCache {
    /// A cache keeping entries `keep_ms` milliseconds, at most `capacity` of
    /// them; `key` randomises the hash.
    pub fn new(keep_ms: u64, capacity: usize, key: u64) -> Self {
        // Grown on demand: an idle node should cost little.
        let initial = capacity.clamp(1, 64);
        SeenCache {
            set: HashSet::with_capacity_and_hasher(initial, KeyedIdHash(key)),
            order: VecDeque::with_capacity(initial),
            keep_ms,
            capacity: capacity.max(1),
        }
    }

    fn key(id: &MsgId) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&id.0[..8]);
        u64::from_le_bytes(b)
    }

    /// Records `id`; returns `false` if it was already there.
    pub fn insert(&mut self, id: &MsgId, now_ms: u64) -> bool {
        let k = Self::key(id);
        if !self.set.insert(k) {
            return false;
        }
        if self.order.len() >= self.capacity {
            if let Some((_, old)) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.order.push_back((now_ms, k));
        true
    }

    /// Whether `id` is remembered.
    pub fn contains(&self, id: &MsgId) -> bool {
        self.set.contains(&Self::key(id))
    }

    /// Forgets entries older than the keep time.
    pub fn expire(&mut self, now_ms: u64) {
        while let Some(&(t, k)) = self.order.front() {
            if t.saturating_add(self.keep_ms) > now_ms {
                break;
            }
            self.order.pop_front();
            self.set.remove(&k);
        }
    }

    /// When the oldest entry expires (monotonic ms), if any.
    pub fn next_expiry(&self) -> Option<u64> {
        self.order.front().map(|&(t, _)| t.saturating_add(self.keep_ms))
    }

    /// Number of remembered ids.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> MsgId {
        MsgId([n; 32])
    }

    #[test]
    fn dedups_expires_and_bounds() {
        let mut c = SeenCache::new(60_000, 3, 7);
        assert!(c.insert(&id(1), 0));
        assert!(!c.insert(&id(1), 10));
        assert!(c.insert(&id(2), 20_000));
        c.expire(59_999);
        assert!(c.contains(&id(1)));
        c.expire(60_000);
        assert!(!c.contains(&id(1)));
        assert!(c.contains(&id(2)));
        assert!(c.insert(&id(3), 30_000));
        assert!(c.insert(&id(4), 30_000));
        assert!(c.insert(&id(5), 30_000));
        assert_eq!(c.len(), 3);
        assert!(!c.contains(&id(2)), "oldest evicted at capacity");
    }
}
