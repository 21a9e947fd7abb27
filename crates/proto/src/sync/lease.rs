//! py2p's leases: a key written by one node cannot be written by another
//! for an hour after that node's last write (unless leasing is off).
//!
//! Two rules, both here: the check on local writes ([`Replica::lease_error`],
//! against the entry the replica holds) and py2p's own `__check_lease` for
//! writes that come from py2p nodes ([`Replica::py2p_accepts`], with its
//! same-second tie rule).
//!
//! # Open: a lease rule for rs2p writes that every replica applies alike
//! A write carrying rs2p's `[ts_ms]` is merged by version order alone, so a
//! peer that sends one takes a leased key (issue #13). The fix is not a
//! receiver-side check against the entry held: two replicas that saw the
//! owner's write and a rival's in opposite orders would then disagree for
//! good. What was found while designing one, for whoever takes it up:
//! - a pairwise rule ("of two writes by different owners less than a lease
//!   apart, the earlier wins") is not transitive: the owner's own later
//!   write A@3 loses to a rival B@2 once A@1, which set up the lease, has
//!   been superseded everywhere, so the lease must be remembered with the
//!   entry (since when its holder has held it), not read off the newest
//!   version;
//! - even with that, a replica that drops a write because, as far as it
//!   knows, it came within another holder's lease cannot take it back when
//!   an earlier write shows that holder's lease to be void: order
//!   independence needs the candidate writes of the lease period kept per
//!   writer (bounded, since any number of ids can write);
//! - writers choose `ts_ms`: a rule that favours the earlier holder invites
//!   backdating, so stamps must be bound to the header's time (which the
//!   mesh keeps within 60 s of now), and anti-entropy's records trusted only
//!   once they are signed.

use super::{Entry, Replica, WriteError};
use crate::id::PeerId;
use crate::Now;

/// py2p's lease: one hour after the holder's last write.
pub const LEASE_MS: u64 = 3_600_000;

impl Replica {
    /// The lease holder blocking a write by us to `entry`, if any. py2p's
    /// rule, as its `__check_lease` applies it to its own writes: free if
    /// leasing is off, the key deleted, the holder us, the lease (an hour
    /// after the holder's last write) over, or, py2p's tie rule, the
    /// holder's write in this very second with a greater id than ours.
    pub(super) fn lease_error(&self, now: Now, entry: &Entry) -> Option<WriteError> {
        if !self.cfg.leasing || entry.is_tombstone() {
            return None;
        }
        let v = entry.latest();
        let until = v.ts_ms.saturating_add(self.cfg.lease_ms);
        let tie_won = v.secs() == now.unix() && v.owner.as_bytes() > self.me.as_bytes();
        (v.owner != self.me && until > now.unix_ms && !tie_won)
            .then(|| WriteError::Leased { owner: v.owner.clone(), until: until / 1000 })
    }

    /// py2p's `__check_lease` for a write by `owner` at `ts_secs` that came
    /// from a py2p node.
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
