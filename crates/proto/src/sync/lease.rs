//! Leases: a key written by one node cannot be written by another for an
//! hour after that node's last write (unless leasing is off). Every lease
//! rule of the replica is here.
//!
//! # The rule every replica applies alike (rs2p)
//! A receiver cannot judge a write against "the entry it holds now": two
//! replicas that saw an owner's write and a rival's in opposite orders
//! would disagree for good. So under leases an entry keeps its **holdings**
//! and derives its value from them, a function of the *set* of writes it
//! has seen, whatever their order:
//! - a **holding** is one owner's run of writes to the key, each less than
//!   a lease ([`super::Config::lease_ms`]) after the one before: the
//!   owner's writes grouped by that gap (a write within a lease of two
//!   holdings joins them). It keeps its first and last write time and its
//!   writes merged as an entry merges them;
//! - a holding's lease ends a lease after its last write, or at that write
//!   if it left the key deleted (a delete frees the key, as in py2p);
//! - in order of first write (ties: the smaller owner id, py2p's tie rule),
//!   a holding is **granted** if it starts when no granted holding's lease
//!   runs, and **refused** otherwise, all of it;
//! - the key's value is the merge of the granted holdings' writes.
//!
//! A write carrying rs2p's `[ts_ms]` and a py2p write (the header's time, in
//! seconds) are bound alike: a rival's write inside the owner's lease starts
//! a refused holding and never shows, at every replica. Local writes are
//! checked against the same rule ([`Replica::lease_error`]), so an honest
//! node refuses them before they leave. Holdings travel with anti-entropy
//! records, so a repaired replica judges as the others do.
//!
//! What the rule costs and leaves open:
//! - a writer whose earlier writes were refused (they raced the holder,
//!   e.g. during a partition) stays refused until a lease after its last
//!   refused write, not just until the holder's lease ends: its next write
//!   would join the refused holding. [`Replica::lease_error`] reports that
//!   later time;
//! - an acknowledged write can be taken back by the heal of a partition in
//!   which another node held the lease first: leases rank holders, and the
//!   earlier one wins;
//! - holdings older than the tombstone lifetime are folded away
//!   ([`Entry::purge_holdings`]), so a write arriving later than that may
//!   be judged differently by replicas that purged at different times, as
//!   with tombstones; a key keeps at most [`MAX_HOLDINGS`] holdings
//!   (a flood of writers past it is dropped, and may be judged unequally);
//! - writers choose `ts_ms`, and a rule that favours the earlier holder
//!   invites backdating: floods are bound by the mesh's 60 s window on
//!   header times; anti-entropy records are not, so a writer can backdate
//!   its *own* writes there. It cannot backdate or stretch another's:
//!   between rs2p nodes every write, and a holding's start, carry their
//!   writer's proof (`proof.rs`, checked in `anti_entropy.rs`), and a
//!   holding must end at its writer's latest write;
//! - py2p replicas apply py2p's own rule (against the entry they hold) and
//!   can disagree with rs2p replicas after concurrent writes.
//!
//! Without leases (`sync0`), writes from py2p nodes still pass py2p's
//! `__check_lease` ([`Replica::py2p_accepts`]), as py2p applies it.

use std::borrow::Cow;

use bytes::Bytes;
use rmpv::Value;

use super::entry::{ProofSlot, Version};
use super::{Entry, Replica, WriteError};
use crate::id::PeerId;
use crate::Now;

/// py2p's lease: one hour after the holder's last write.
pub const LEASE_MS: u64 = 3_600_000;

/// Most holdings a key keeps; a new holding past it is dropped. Honest
/// nodes make a second holding only when the first one's lease is over or
/// when they race it across a partition, so this bounds a flood of writers.
pub const MAX_HOLDINGS: usize = 64;

/// One owner's run of writes to a key, each within a lease of the last.
#[derive(Debug, Clone, PartialEq)]
pub struct Holding {
    /// Whose writes.
    pub owner: PeerId,
    /// The first write's time (ms).
    pub start_ms: u64,
    /// The last write's time (ms).
    pub end_ms: u64,
    /// The proof of the first write (at `start_ms`), kept even once a later
    /// write replaced it, so the holding's start stays checkable.
    pub start: ProofSlot,
    /// The writes, merged as an entry's are (no holdings of their own).
    pub writes: Entry,
}

impl Holding {
    /// When the key is free again after this holding: a lease after its
    /// last write, or at once if its writes left the key deleted.
    pub fn lease_end(&self, lease_ms: u64) -> u64 {
        self.span().lease_end(lease_ms)
    }

    fn span(&self) -> Span<'_> {
        Span { owner: &self.owner, start_ms: self.start_ms, end_ms: self.end_ms, deleted: self.writes.is_tombstone() }
    }

    /// Whether writes from `start` to `end` by the same owner join this
    /// holding (less than a lease apart).
    fn near(&self, start: u64, end: u64, lease_ms: u64) -> bool {
        start < self.end_ms.saturating_add(lease_ms) && self.start_ms < end.saturating_add(lease_ms)
    }

    fn order(&self, other: &Holding) -> std::cmp::Ordering {
        self.start_ms.cmp(&other.start_ms).then_with(|| self.owner.as_bytes().cmp(other.owner.as_bytes()))
    }
}

/// An entry's holdings. One holding (the common case: a key one node
/// writes) keeps no copy of its writes: they are the entry's own base and
/// fields. Several keep each their writes, and the entry's value is derived
/// from the granted ones. Several that come down to one become one again,
/// so equal sets of writes give equal entries.
#[derive(Debug, Clone, PartialEq)]
pub enum Holdings {
    /// One holding; its writes are the entry's base and fields.
    One {
        /// Whose writes.
        owner: PeerId,
        /// The first write's time (ms).
        start_ms: u64,
        /// The last write's time (ms).
        end_ms: u64,
        /// The proof of the first write.
        start: ProofSlot,
    },
    /// Several, in order of first write (then owner).
    Many(Vec<Holding>),
}

/// What the rule looks at in a holding.
struct Span<'a> {
    owner: &'a PeerId,
    start_ms: u64,
    end_ms: u64,
    deleted: bool,
}

impl Span<'_> {
    fn lease_end(&self, lease_ms: u64) -> u64 {
        if self.deleted {
            self.end_ms
        } else {
            self.end_ms.saturating_add(lease_ms)
        }
    }
}

/// A write's payload.
#[derive(Debug, Clone, Copy)]
pub(super) enum Write<'a> {
    /// A set (nil: a delete); its proof is the version's.
    Set(&'a Value),
    /// A delta's fields, with one proof per field (or none).
    Delta(&'a [(Value, Value)], &'a [ProofSlot]),
}

impl Write<'_> {
    /// The proof of the write's first part: a holding it starts keeps it.
    fn start_proof(&self, version: &Version) -> ProofSlot {
        match self {
            Write::Set(_) => version.proof.clone(),
            Write::Delta(_, proofs) => proofs.first().cloned().unwrap_or_default(),
        }
    }
}

/// The starting point of an entry made by a delta: the oldest version.
fn empty_register() -> Entry {
    Entry::new(Version::new(0, PeerId::from_bytes(Bytes::new())), Value::Nil)
}

/// Whether each holding (in their order) is granted.
fn granted(holdings: &[Holding], lease_ms: u64) -> Vec<bool> {
    let spans: Vec<Span<'_>> = holdings.iter().map(Holding::span).collect();
    granted_spans(&spans, lease_ms)
}

/// The rule itself: in order, a holding is granted if it starts when no
/// granted holding's lease runs.
fn granted_spans(spans: &[Span<'_>], lease_ms: u64) -> Vec<bool> {
    let mut free_from = 0;
    spans
        .iter()
        .map(|h| {
            let ok = h.start_ms >= free_from;
            if ok {
                free_from = h.lease_end(lease_ms);
            }
            ok
        })
        .collect()
}

impl Entry {
    /// Applies one write to the entry's own base and fields (the register
    /// rules of `entry.rs`). Returns whether they changed.
    pub(super) fn apply_to_register(&mut self, version: &Version, write: Write<'_>) -> bool {
        match write {
            Write::Set(v) => self.apply_set(version, v),
            Write::Delta(d, []) => self.apply_delta(version, d),
            // Each field with its own proof.
            Write::Delta(d, proofs) => {
                let mut changed = false;
                for (field, proof) in d.iter().zip(proofs) {
                    let v = Version { proof: proof.clone(), ..version.clone() };
                    changed |= self.apply_delta(&v, std::slice::from_ref(field));
                }
                changed
            }
        }
    }

    /// The entry's value as one holding's writes (holdings aside).
    fn register(&self) -> Entry {
        Entry {
            base_version: self.base_version.clone(),
            base: self.base.clone(),
            fields: self.fields.clone(),
            holdings: None,
        }
    }

    /// Whether the entry is the empty start of a new key.
    fn is_blank(&self) -> bool {
        self.holdings.is_none() && self.is_tombstone() && self.base_version.ts_ms == 0
    }

    /// The holdings with their writes: for one holding, or for an entry made
    /// without holdings (stored or sent by a node without leases: one
    /// holding of its latest writer), a copy of the entry's own.
    fn holdings_view(&self) -> Cow<'_, [Holding]> {
        match self.holdings.as_deref() {
            Some(Holdings::Many(hs)) => Cow::Borrowed(hs.as_slice()),
            Some(Holdings::One { owner, start_ms, end_ms, start }) => Cow::Owned(vec![Holding {
                owner: owner.clone(),
                start_ms: *start_ms,
                end_ms: *end_ms,
                start: start.clone(),
                writes: self.register(),
            }]),
            None if self.is_blank() => Cow::Owned(Vec::new()),
            None => {
                let latest = self.latest().clone();
                Cow::Owned(vec![Holding {
                    owner: latest.owner,
                    start_ms: latest.ts_ms,
                    end_ms: latest.ts_ms,
                    start: latest.proof,
                    writes: self.register(),
                }])
            }
        }
    }

    /// What the rule needs of each holding, without copying writes.
    fn spans(&self) -> Vec<Span<'_>> {
        match self.holdings.as_deref() {
            Some(Holdings::Many(hs)) => hs.iter().map(Holding::span).collect(),
            Some(Holdings::One { owner, start_ms, end_ms, .. }) => {
                vec![Span { owner, start_ms: *start_ms, end_ms: *end_ms, deleted: self.is_tombstone() }]
            }
            None if self.is_blank() => Vec::new(),
            None => {
                let latest = self.latest();
                vec![Span {
                    owner: &latest.owner,
                    start_ms: latest.ts_ms,
                    end_ms: latest.ts_ms,
                    deleted: self.is_tombstone(),
                }]
            }
        }
    }

    /// The holdings as records travel (see `to_record`).
    pub(super) fn holdings_for_record(&self) -> Cow<'_, [Holding]> {
        match self.holdings {
            Some(_) => self.holdings_view(),
            None => Cow::Owned(Vec::new()),
        }
    }

    /// Applies one write under leases. Returns whether the entry changed
    /// (its value, or a refused holding: both matter to anti-entropy).
    pub(super) fn apply_leased(&mut self, version: &Version, write: Write<'_>, lease_ms: u64) -> bool {
        let ts = version.ts_ms;
        // The common cases, in place: a new key, or another write of its
        // only holder within a lease.
        if self.is_blank() {
            self.holdings = Some(Box::new(Holdings::One {
                owner: version.owner.clone(),
                start_ms: ts,
                end_ms: ts,
                start: write.start_proof(version),
            }));
            match write {
                // Taken as is: the blank entry would win a tie at time 0.
                Write::Set(v) => {
                    self.base_version = version.clone();
                    self.base = v.clone();
                }
                Write::Delta(..) => {
                    self.apply_to_register(version, write);
                }
            }
            return true;
        }
        if let Some(Holdings::One { owner, start_ms, end_ms, start }) = self.holdings.as_deref_mut() {
            if *owner == version.owner
                && ts < end_ms.saturating_add(lease_ms)
                && *start_ms < ts.saturating_add(lease_ms)
            {
                let widened = ts < *start_ms || ts > *end_ms;
                keep_earlier_start(start, *start_ms, || write.start_proof(version), ts);
                *start_ms = (*start_ms).min(ts);
                *end_ms = (*end_ms).max(ts);
                return self.apply_to_register(version, write) || widened;
            }
        }
        // A set starts its register (the empty one would win a tie at
        // time 0); a delta applies to the empty one.
        let writes = match write {
            Write::Set(v) => Entry::new(version.clone(), v.clone()),
            Write::Delta(..) => {
                let mut e = empty_register();
                e.apply_to_register(version, write);
                e
            }
        };
        let start = write.start_proof(version);
        let h = Holding { owner: version.owner.clone(), start_ms: ts, end_ms: ts, start, writes };
        self.add_holdings(std::iter::once(h), lease_ms)
    }

    /// Whether the holding that holds the write `version` is granted.
    pub(super) fn grants(&self, version: &Version, lease_ms: u64) -> bool {
        // A lone holding is granted: no list to build on this path.
        if let Some(Holdings::One { owner, start_ms, end_ms, .. }) = self.holdings.as_deref() {
            return *owner == version.owner && (*start_ms..=*end_ms).contains(&version.ts_ms);
        }
        let spans = self.spans();
        let ok = granted_spans(&spans, lease_ms);
        spans
            .iter()
            .zip(ok)
            .any(|(h, ok)| ok && *h.owner == version.owner && h.start_ms <= version.ts_ms && version.ts_ms <= h.end_ms)
    }

    /// Merges another replica's entry under leases.
    pub(super) fn merge_leased(&mut self, other: &Entry, lease_ms: u64) -> bool {
        let theirs = other.holdings_view().into_owned();
        self.add_holdings(theirs, lease_ms)
    }

    fn add_holdings(&mut self, new: impl IntoIterator<Item = Holding>, lease_ms: u64) -> bool {
        let mut hs = match self.holdings.take().map(|b| *b) {
            Some(Holdings::Many(hs)) => hs,
            other => {
                self.holdings = other.map(Box::new);
                let hs = self.holdings_view().into_owned();
                self.holdings = None;
                hs
            }
        };
        let mut changed = false;
        for h in new {
            changed |= add_holding(&mut hs, h, lease_ms);
        }
        self.set_holdings(hs, lease_ms);
        changed
    }

    /// Keeps `hs` (sorted) as the entry's holdings and derives its value:
    /// the merge of the granted holdings' writes.
    fn set_holdings(&mut self, mut hs: Vec<Holding>, lease_ms: u64) {
        if hs.len() == 1 {
            let h = hs.pop().expect("one");
            self.base_version = h.writes.base_version;
            self.base = h.writes.base;
            self.fields = h.writes.fields;
            self.holdings = Some(Box::new(Holdings::One {
                owner: h.owner,
                start_ms: h.start_ms,
                end_ms: h.end_ms,
                start: h.start,
            }));
            return;
        }
        let ok = granted(&hs, lease_ms);
        let mut value: Option<Entry> = None;
        for (h, _) in hs.iter().zip(&ok).filter(|(_, ok)| **ok) {
            match value.as_mut() {
                None => value = Some(h.writes.clone()),
                Some(v) => {
                    v.merge(&h.writes);
                }
            }
        }
        let v = value.unwrap_or_else(empty_register);
        self.base_version = v.base_version;
        self.base = v.base;
        self.fields = v.fields;
        self.holdings = (!hs.is_empty()).then(|| Box::new(Holdings::Many(hs)));
    }

    /// Folds away holdings that can no longer matter to a write younger
    /// than `cutoff` (ms): those before the last granted one, once all of
    /// them ended their lease before `cutoff` (their granted writes are
    /// merged into it), and refused ones after it that ended before
    /// `cutoff`. The value is unchanged. Returns whether anything was.
    pub(super) fn purge_holdings(&mut self, cutoff: u64, lease_ms: u64) -> bool {
        let Some(Holdings::Many(hs)) = self.holdings.as_deref_mut() else { return false };
        let ok = granted(hs, lease_ms);
        let Some(last) = ok.iter().rposition(|g| *g) else { return false };
        let mut changed = false;
        if last > 0 && hs[..last].iter().all(|h| h.lease_end(lease_ms) < cutoff) {
            let mut folded = empty_register();
            for (h, _) in hs[..last].iter().zip(&ok).filter(|(_, ok)| **ok) {
                folded.merge(&h.writes);
            }
            let kept = hs.split_off(last);
            *hs = kept;
            folded.merge(&hs[0].writes);
            hs[0].writes = folded;
            changed = true;
        }
        // Refused holdings after the last granted one set no lease: the old
        // ones can go.
        let last = granted(hs, lease_ms).iter().rposition(|g| *g).unwrap_or(0);
        let before = hs.len();
        let mut i = 0;
        hs.retain(|h| {
            i += 1;
            i <= last + 1 || h.lease_end(lease_ms) >= cutoff
        });
        changed |= hs.len() != before;
        if changed {
            let hs = std::mem::take(hs);
            self.set_holdings(hs, lease_ms);
        }
        changed
    }
}

/// A holding that took writes from `other_ms` keeps the proof of its
/// first write: `other`'s if it starts earlier than `start_ms` (or as early,
/// when `start` has none).
fn keep_earlier_start(start: &mut ProofSlot, start_ms: u64, other: impl FnOnce() -> ProofSlot, other_ms: u64) {
    if other_ms < start_ms || (other_ms == start_ms && !start.is_some()) {
        *start = other();
    }
}

/// Adds one holding to a sorted list, joining the same owner's holdings
/// within a lease of it. Returns whether the list changed.
fn add_holding(hs: &mut Vec<Holding>, new: Holding, lease_ms: u64) -> bool {
    let near: Vec<usize> =
        (0..hs.len()).filter(|&i| hs[i].owner == new.owner && hs[i].near(new.start_ms, new.end_ms, lease_ms)).collect();
    match near.as_slice() {
        [] => {
            if hs.len() >= MAX_HOLDINGS {
                return false;
            }
            let at = hs.partition_point(|h| h.order(&new).is_lt());
            hs.insert(at, new);
            true
        }
        [i] => {
            let h = &mut hs[*i];
            let mut changed = h.writes.merge(&new.writes);
            keep_earlier_start(&mut h.start, h.start_ms, || new.start.clone(), new.start_ms);
            if new.start_ms < h.start_ms || new.end_ms > h.end_ms {
                h.start_ms = h.start_ms.min(new.start_ms);
                h.end_ms = h.end_ms.max(new.end_ms);
                changed = true;
                hs.sort_by(Holding::order);
            }
            changed
        }
        _ => {
            let mut joined = new;
            for &i in near.iter().rev() {
                let h = hs.remove(i);
                keep_earlier_start(&mut joined.start, joined.start_ms, || h.start.clone(), h.start_ms);
                joined.start_ms = joined.start_ms.min(h.start_ms);
                joined.end_ms = joined.end_ms.max(h.end_ms);
                joined.writes.merge(&h.writes);
            }
            let at = hs.partition_point(|h| h.order(&joined).is_lt());
            hs.insert(at, joined);
            true
        }
    }
}

impl Replica {
    /// Why a local write by us at `ts_ms` to `entry` would be refused, if
    /// it would: the rule above, applied to the holding the write would
    /// start or join. py2p's own check is stricter in one way (it looks at
    /// the entry as held) and looser in one other (its same-second tie):
    /// rs2p's versions are milliseconds, so neither applies between rs2p
    /// nodes.
    pub(super) fn lease_error(&self, entry: &Entry, ts_ms: u64) -> Option<WriteError> {
        if !self.cfg.leasing {
            return None;
        }
        let lease = self.cfg.lease_ms;
        let spans = entry.spans();
        let mine = |h: &Span<'_>| {
            *h.owner == self.me && ts_ms < h.end_ms.saturating_add(lease) && h.start_ms < ts_ms.saturating_add(lease)
        };
        // The holding this write would start or join.
        let start = spans.iter().filter(|h| mine(h)).map(|h| h.start_ms).fold(ts_ms, u64::min);
        let end = spans.iter().filter(|h| mine(h)).map(|h| h.end_ms).fold(ts_ms, u64::max);
        let others: Vec<&Span<'_>> = spans.iter().filter(|h| !mine(h)).collect();
        let mut free_from = 0;
        let mut blocker: Option<(&PeerId, u64)> = None;
        for h in others {
            let before_us = (h.start_ms, h.owner.as_bytes()) < (start, self.me.as_bytes());
            if !before_us {
                break;
            }
            if h.start_ms >= free_from {
                free_from = h.lease_end(lease);
                blocker = Some((h.owner, free_from));
            }
        }
        let (holder, free_from) = blocker?;
        (start < free_from).then(|| {
            // Joining our refused holding keeps us refused until a lease
            // after its last write.
            let until = if start < ts_ms { free_from.max(end.saturating_add(lease)) } else { free_from };
            WriteError::Leased { owner: holder.clone(), until: until.div_ceil(1000) }
        })
    }

    /// py2p's `__check_lease` for a write by `owner` at `ts_secs` that came
    /// from a py2p node (networks without leases; with leases every write
    /// goes through the rule above).
    pub(super) fn py2p_accepts(&self, now: Now, key: &[u8], owner: &PeerId, ts_secs: u64, delta: bool) -> bool {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: u64 = 100;

    fn pid(s: &str) -> PeerId {
        PeerId::from_bytes(s.as_bytes().to_vec())
    }

    fn set(e: &mut Entry, ts: u64, owner: &str, v: &str) -> bool {
        e.apply_leased(&Version::new(ts, pid(owner)), Write::Set(&Value::from(v)), L)
    }

    fn value(e: &Entry) -> Option<Value> {
        e.value()
    }

    #[test]
    fn a_rival_inside_the_lease_is_refused_in_either_order() {
        let mut a = empty_register();
        set(&mut a, 10, "A", "a1");
        set(&mut a, 50, "B", "b1");
        let mut b = empty_register();
        set(&mut b, 50, "B", "b1");
        set(&mut b, 10, "A", "a1");
        assert_eq!(value(&a), Some(Value::from("a1")));
        assert_eq!(a, b);
        // The holder's own later write wins; the rival's holding stays
        // refused (it started inside the lease).
        set(&mut a, 60, "A", "a2");
        assert_eq!(value(&a), Some(Value::from("a2")));
        // B tries again at 145 (its refused holding now runs 50-145), and
        // at 200, after A's lease (100 after A's last write, at 60): still
        // refused, since it joins B's refused holding (145 + 100). At 400
        // B starts a new holding and takes the key.
        set(&mut a, 145, "B", "b2");
        set(&mut a, 200, "B", "b3");
        assert_eq!(value(&a), Some(Value::from("a2")), "joins B's refused holding");
        set(&mut a, 400, "B", "b4");
        assert_eq!(value(&a), Some(Value::from("b4")));
    }

    #[test]
    fn a_delete_frees_the_key() {
        let mut e = empty_register();
        set(&mut e, 10, "A", "a1");
        e.apply_leased(&Version::new(20, pid("A")), Write::Set(&Value::Nil), L);
        assert!(e.is_tombstone());
        set(&mut e, 30, "B", "b1");
        assert_eq!(value(&e), Some(Value::from("b1")));
    }

    #[test]
    fn the_transitivity_case_holds() {
        // A@1 sets up the lease, a rival writes B@2, the owner writes A@3:
        // A@3 must win whatever arrives first.
        let writes = [(1, "A", "a1"), (2, "B", "b2"), (3, "A", "a3")];
        let mut results = Vec::new();
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [1, 0, 2]] {
            let mut e = empty_register();
            for i in order {
                let (ts, o, v) = writes[i];
                set(&mut e, ts, o, v);
            }
            assert_eq!(value(&e), Some(Value::from("a3")), "{order:?}");
            results.push(e);
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn a_late_earlier_write_voids_a_lease_and_brings_back_what_it_refused() {
        // B@50 and A@120 arrive first: B holds, A's write (within B's
        // lease) is refused. Then C@0 arrives: C holds until 100, B@50 is
        // refused, and A@120 (after C's lease) is granted.
        let mut e = empty_register();
        set(&mut e, 50, "B", "b");
        set(&mut e, 120, "A", "a");
        assert_eq!(value(&e), Some(Value::from("b")));
        set(&mut e, 0, "C", "c");
        assert_eq!(value(&e), Some(Value::from("a")));
    }

    #[test]
    fn purge_folds_old_holdings_and_keeps_the_value() {
        let mut e = empty_register();
        set(&mut e, 10, "A", "a");
        set(&mut e, 300, "B", "b");
        e.apply_leased(&Version::new(500, pid("C")), Write::Delta(&[(Value::from("f"), Value::from(1))], &[]), L);
        set(&mut e, 320, "D", "refused");
        let before = e.value();
        assert!(matches!(e.holdings.as_deref(), Some(Holdings::Many(hs)) if hs.len() == 4));
        assert!(e.purge_holdings(10_000, L));
        assert_eq!(e.value(), before);
        assert!(matches!(e.holdings.as_deref(), Some(Holdings::One { .. })), "{:?}", e.holdings);
        assert!(!e.purge_holdings(10_000, L));
    }
}
