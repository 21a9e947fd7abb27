//! Peer exchange and keeping connected: peer lists, known peers, redials
//! with backoff.
//!
//! A node answers a handshake (and a `'*'` request) with its peer list; a
//! node receiving one dials listed nodes while it has fewer than
//! [`super::Config::max_outgoing`] outgoing connections (py2p's rule).
//! Beyond py2p, addresses learnt this way and from lost links are kept as
//! *known peers*, redialed with exponential backoff while the node is
//! short, and the node asks its peers for their lists meanwhile.

use std::collections::HashSet;

use rand::seq::SliceRandom;

use super::{ConnId, DialId, Mesh, Output};
use crate::addr::PeerAddr;
use crate::id::PeerId;
use crate::wire::message::MeshMessage;
use crate::{Now, RequestId};

/// Longest backoff between redials of a known peer.
const MAX_REDIAL_BACKOFF_MS: u64 = 60_000;

/// A dial under way.
#[derive(Debug)]
pub(super) struct PendingDial {
    pub(super) addr: PeerAddr,
    pub(super) expected: Option<PeerId>,
    /// Whether the peer must prove it is `expected`.
    pub(super) prove: bool,
    /// The `Connect` command it answers, if any.
    pub(super) request: Option<RequestId>,
}

/// An address to redial while short of outgoing connections.
#[derive(Debug)]
pub(super) struct KnownPeer {
    pub(super) addr: PeerAddr,
    pub(super) next_try_ms: u64,
    pub(super) failures: u32,
}

impl Mesh {
    pub(super) fn dial(&mut self, addr: PeerAddr, expected: Option<PeerId>, request: Option<RequestId>) -> DialId {
        self.next_dial += 1;
        let dial = DialId(self.next_dial);
        self.dials.insert(dial, PendingDial { addr: addr.clone(), expected, prove: false, request });
        self.out.push_back(Output::Dial { dial, addr });
        dial
    }

    /// Sends our peer list on `conn`, in random order, at most
    /// [`super::Config::max_peer_list`] entries.
    pub(super) fn send_peers(&mut self, now: Now, conn: ConnId) {
        let mut list: Vec<(PeerAddr, PeerId)> =
            self.routing.iter().filter_map(|(id, c)| Some((self.conns.get(c)?.addr.clone()?, id.clone()))).collect();
        // Sorted first so the shuffle alone decides the order (reproducible
        // from the seed).
        list.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.as_bytes().cmp(b.1.as_bytes())));
        list.shuffle(&mut self.rng);
        list.truncate(self.cfg.max_peer_list);
        let frame = MeshMessage::Peers(list).encode(&self.cfg.id, now.unix());
        self.send(conn, frame);
    }

    /// Asks every peer for its peer list (py2p's `request_peers`).
    pub(super) fn request_peers(&mut self, now: Now) {
        let frame = MeshMessage::PeerRequest.encode(&self.cfg.id, now.unix());
        let mut conns: Vec<ConnId> = self.routing.values().copied().collect();
        conns.sort_unstable(); // in a reproducible order (simulations)
        for conn in conns {
            self.send(conn, frame.clone());
        }
        self.next_peer_request_ms = now.mono_ms + self.cfg.peer_request_interval_ms;
    }

    /// A peer list arrived: remember the addresses, dial while short.
    pub(super) fn on_peers(&mut self, list: Vec<(PeerAddr, PeerId)>) {
        for (addr, id) in list.into_iter().take(self.cfg.max_peer_list) {
            if id == self.cfg.id || addr == self.cfg.out_addr || self.routing.contains_key(&id) {
                continue;
            }
            let dialing = self.dials.values().any(|d| d.expected.as_ref() == Some(&id) || d.addr == addr)
                || self.conns.values().any(|c| c.target.as_ref() == Some(&addr));
            if dialing {
                continue;
            }
            if !self.known.contains_key(&id) && self.known.len() >= self.cfg.max_known_peers {
                // Full: replace an arbitrary entry so fresh addresses still get in.
                let victim = self.known.keys().min_by(|a, b| a.as_bytes().cmp(b.as_bytes())).cloned();
                if let Some(victim) = victim {
                    self.known.remove(&victim);
                }
            }
            let k =
                self.known.entry(id.clone()).or_insert(KnownPeer { addr: addr.clone(), next_try_ms: 0, failures: 0 });
            k.addr = addr.clone();
            if self.outgoing_count() < self.cfg.max_outgoing {
                self.dial(addr, Some(id), None);
            }
        }
    }

    /// Redials known peers and asks for more while short of outgoing
    /// connections.
    pub(super) fn maintain(&mut self, now: Now) {
        let mut deficit = self.cfg.max_outgoing.saturating_sub(self.outgoing_count());
        if deficit == 0 {
            return;
        }
        let dialing: HashSet<PeerId> = self.dials.values().filter_map(|d| d.expected.clone()).collect();
        let mut candidates: Vec<PeerId> = self
            .known
            .iter()
            .filter(|(id, k)| k.next_try_ms <= now.mono_ms && !self.routing.contains_key(*id) && !dialing.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        candidates.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        candidates.shuffle(&mut self.rng);
        for id in candidates {
            if deficit == 0 {
                break;
            }
            let Some(k) = self.known.get_mut(&id) else { continue };
            // Pessimistically schedule the next try; success removes the entry.
            k.next_try_ms = now.mono_ms + self.cfg.redial_backoff_ms;
            let addr = k.addr.clone();
            tracing::debug!(peer = %id, %addr, failures = k.failures, "redialing a known peer");
            self.dial(addr, Some(id), None);
            deficit -= 1;
        }
        if deficit > 0 && !self.routing.is_empty() && now.mono_ms >= self.next_peer_request_ms {
            self.request_peers(now);
        }
    }

    /// A dial to `id` failed: wait longer before the next one.
    pub(super) fn backoff(&mut self, id: &PeerId, now: Now) {
        if let Some(k) = self.known.get_mut(id) {
            k.failures = k.failures.saturating_add(1);
            let exp = self.cfg.redial_backoff_ms.saturating_mul(1 << k.failures.min(5));
            k.next_try_ms = now.mono_ms + exp.min(MAX_REDIAL_BACKOFF_MS);
        }
    }
}
