//! Opening and closing connections: the handshake, the routing table, and
//! what a lost connection leaves behind.
//!
//! Both ends send a handshake as soon as a connection opens. A handshake
//! from another network (protocol id) or from ourselves closes the link; one
//! from a peer already connected goes through the conflict rule
//! ([`super::resolve_conflict`]). A handshaken peer enters the routing
//! table, gets our peer list and any replies that waited for its route.

use super::conflict::{resolve_conflict, Keep};
use super::conn::{Conn, ConnState};
use super::link::{codec_for, is_rs2p, speaks_tree};
use super::peers::KnownPeer;
use super::{CloseReason, CommandError, ConnId, DialId, Event, LinkCodec, Mesh, Output, Reply};
use crate::id::PeerId;
use crate::id::{Encryption, Protocol};
use crate::wire::message::{Farewell, Handshake, MeshMessage};
use crate::Now;

impl Mesh {
    /// A new connection: send our handshake, start its deadline.
    pub(super) fn open(&mut self, now: Now, conn: ConnId, c: Conn) {
        self.conns.insert(conn, c);
        self.handshake_deadlines.push_back((now.mono_ms + self.cfg.handshake_timeout_ms, conn));
        let frame = MeshMessage::Handshake(Handshake {
            id: self.cfg.id.clone(),
            protocol: self.protocol_id.as_bytes().to_vec(),
            addr: Some(self.cfg.out_addr.clone()),
            methods: self.advertised_methods(),
        })
        .encode(&self.cfg.id, now.unix());
        self.out.push_back(Output::Configure { conn, codec: LinkCodec::HANDSHAKE });
        self.send(conn, frame);
    }

    pub(super) fn on_handshake(&mut self, now: Now, conn: ConnId, hs: Handshake) {
        if hs.protocol != self.protocol_id.as_bytes() {
            let reason = CloseReason::ProtocolMismatch {
                ours: self.protocol_id.to_string(),
                theirs: String::from_utf8_lossy(&hs.protocol).into_owned(),
                our_network: Box::new(self.cfg.protocol.clone()),
                their_network: guess_network(&self.cfg.protocol, &hs.protocol).map(Box::new),
            };
            tracing::info!(%reason, "refusing connection");
            return self.close(conn, reason);
        }
        let peer = hs.id.clone();
        if peer == self.cfg.id {
            return self.close(conn, CloseReason::SelfConnection);
        }
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.claimed = Some(peer.clone());
        self.admit(now, conn, hs);
    }

    /// Brings a link up: the peer enters the routing table (after the
    /// conflict rule), gets our peer list and what waited for it.
    pub(super) fn establish(&mut self, now: Now, conn: ConnId, hs: Handshake) {
        let peer = hs.id.clone();
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let new_outgoing = c.dir == super::Direction::Outgoing;
        // A second link to a peer already up replaces the first without the
        // peer going down: the application hears of neither.
        // So does one that replaces a link the peer closed as a duplicate.
        let replaces = self.routing.contains_key(&peer) || self.replacing.remove(&peer).is_some();
        if let Some(&existing) = self.routing.get(&peer) {
            match resolve_conflict(&self.cfg.id, &peer, new_outgoing) {
                Keep::Existing => {
                    // The other end may already count this link as its
                    // peer's (it heard our handshake first): an rs2p peer is
                    // told that another link replaces it, so it waits for
                    // that one instead of reporting us gone.
                    if is_rs2p(&hs.methods) {
                        let frame = MeshMessage::Goodbye(Farewell::Replaced).encode(&self.cfg.id, now.unix());
                        self.send_control(conn, frame);
                    }
                    return self.close(conn, CloseReason::Duplicate);
                }
                Keep::New => {
                    // Move the routing entry first so closing the old link
                    // does not report the peer as gone.
                    self.routing.insert(peer.clone(), conn);
                    self.close(existing, CloseReason::Duplicate);
                }
            }
        }
        // py2p's `connect` event: the routing table goes from empty to one.
        let first = self.routing.is_empty();
        let codec = codec_for(&self.cfg.compression, &hs.methods);
        let rs2p = is_rs2p(&hs.methods);
        let tree = self.cfg.broadcast == super::Broadcast::Tree && speaks_tree(&hs.methods);
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.state = ConnState::Established(peer.clone());
        c.addr = hs.addr.clone().or_else(|| c.target.clone());
        c.peer_methods = hs.methods;
        c.codec = codec;
        c.tree = tree;
        c.last_rx_ms = now.mono_ms;
        c.next_heartbeat_ms = now.mono_ms + self.cfg.keepalive_interval_ms;
        let outgoing = c.dir == super::Direction::Outgoing;
        // A proven link answers its `connect` once the peer counts it too.
        let request = if c.awaits_peer_ok { None } else { c.request.take() };
        self.routing.insert(peer.clone(), conn);
        self.known.remove(&peer);
        self.dissemination.link_up(conn, tree);
        if tree {
            self.tree_links += 1;
        }
        self.out.push_back(Output::Configure { conn, codec });
        tracing::info!(conn = conn.0, %peer, addr = ?hs.addr, outgoing, rs2p, tree, replaces, "link up");
        self.event(Event::PeerUp { conn, peer: peer.clone(), addr: hs.addr, outgoing, first, rs2p, replaces });
        if let Some(request) = request {
            self.out.push_back(Output::Reply { request, result: Ok(Reply::Connected(peer.clone())) });
        }
        self.send_peers(now, conn);
        if let Some(replies) = self.deferred.remove(&peer) {
            for r in replies {
                self.send_user(conn, r.frame);
            }
        }
    }

    pub(super) fn on_dial_failed(&mut self, now: Now, dial: DialId, reason: CloseReason) {
        let Some(d) = self.dials.remove(&dial) else { return };
        // A redial that keeps failing is reported on its 1st, 2nd, 4th,
        // 8th... failure, not every time.
        let mut quiet = false;
        if let Some(expected) = &d.expected {
            self.backoff(expected, now);
            let failures = self.known.get(expected).map_or(1, |k| k.failures);
            quiet = d.request.is_none() && !failures.is_power_of_two();
        }
        if let Some(request) = d.request {
            let result = Err(CommandError::Connect { addr: d.addr.clone(), reason: reason.clone() });
            self.out.push_back(Output::Reply { request, result });
        }
        tracing::debug!(addr = %d.addr, %reason, quiet, "dial failed");
        if !quiet {
            self.event(Event::ConnectFailed { conn: None, peer: None, addr: Some(d.addr), reason });
        }
    }

    /// Everything a closed connection leaves behind: the routing entry (and
    /// a redial candidate), or a failed connection attempt.
    pub(super) fn forget(&mut self, now: Now, conn: ConnId, c: Conn, reason: CloseReason) {
        match c.state {
            ConnState::Established(peer) => {
                if let Some(request) = c.request {
                    // Closed before the peer confirmed it: connected all the
                    // same if another link to the peer wins.
                    let replaced = reason == CloseReason::Duplicate || c.farewell == Some(Farewell::Replaced);
                    let result = match (replaced, c.target.clone()) {
                        (true, _) => Ok(Reply::Connected(peer.clone())),
                        (false, Some(addr)) => Err(CommandError::Connect { addr, reason: reason.clone() }),
                        (false, None) => Err(CommandError::ShuttingDown),
                    };
                    self.out.push_back(Output::Reply { request, result });
                }
                self.dissemination.link_down(conn);
                if c.tree {
                    self.tree_links -= 1;
                }
                if self.routing.get(&peer) != Some(&conn) {
                    return; // replaced by another link to the same peer
                }
                self.routing.remove(&peer);
                // Remember it as a redial candidate unless we chose to drop
                // it, or it told us it quit or dropped us (redialing a peer
                // that cut us off on purpose would undo its choice).
                let chosen = matches!(
                    reason,
                    CloseReason::Requested
                        | CloseReason::Shutdown
                        | CloseReason::PeerLeft(Farewell::Quit | Farewell::Disconnect)
                );
                if let (Some(addr), false) = (c.addr, chosen) {
                    if self.known.len() < self.cfg.max_known_peers {
                        let next_try_ms = now.mono_ms + self.cfg.redial_backoff_ms;
                        self.known.insert(peer.clone(), KnownPeer { addr, next_try_ms, failures: 0 });
                    }
                }
                let lost = !matches!(reason, CloseReason::Shutdown | CloseReason::Duplicate);
                tracing::info!(conn = conn.0, %peer, %reason, "link down");
                if reason == CloseReason::PeerLeft(Farewell::Replaced) {
                    // The link that replaces it is on its way: the peer is
                    // down only if it does not come in time.
                    let deadline = now.mono_ms + self.cfg.handshake_timeout_ms;
                    self.replacing.insert(peer, (deadline, conn, reason));
                    return;
                }
                self.event(Event::PeerDown { conn, peer, reason });
                // py2p asks its peers for theirs whenever a link drops.
                if lost && !self.routing.is_empty() && self.cfg.maintain_outgoing {
                    self.next_peer_request_ms = 0;
                    self.next_maintain_ms = 0;
                }
            }
            ConnState::Handshaking | ConnState::Authenticating(_) => {
                if let Some(target) = &c.target {
                    if let Some((id, _)) = self.known.iter().find(|(_, k)| &k.addr == target) {
                        let id = id.clone();
                        self.backoff(&id, now);
                    }
                }
                // Bytes that are no handshake at all: another service.
                // (A TLS node is a node: its own reason says what to do.)
                let reason = match reason {
                    CloseReason::Decode(crate::wire::DecodeError::LooksLikeTls) => reason,
                    CloseReason::Decode(_) | CloseReason::ProtocolViolation(_) => {
                        CloseReason::NotANode(Box::new(reason))
                    }
                    other => other,
                };
                // The loser of the conflict rule leaves its peer connected
                // through the other link: a connect() that dialed it succeeded.
                // So does a link the peer closed as its duplicate before we
                // had brought it up (it was still proving its id here).
                let duplicate =
                    reason == CloseReason::Duplicate || c.farewell == Some(Farewell::Replaced) && c.claimed.is_some();
                if let Some(request) = c.request {
                    let result = match (&c.claimed, duplicate) {
                        (Some(p), true) => Ok(Reply::Connected(p.clone())),
                        _ => Err(match (&reason, c.target.clone()) {
                            (CloseReason::Shutdown, _) => CommandError::ShuttingDown,
                            (_, Some(addr)) => CommandError::Connect { addr, reason: reason.clone() },
                            (_, None) => CommandError::ShuttingDown,
                        }),
                    };
                    self.out.push_back(Output::Reply { request, result });
                }
                if !duplicate {
                    tracing::info!(conn = conn.0, target = ?c.target, %reason, "connection failed before its handshake");
                    self.event(Event::ConnectFailed { conn: Some(conn), peer: c.claimed, addr: c.target, reason });
                }
            }
        }
    }
}

impl Mesh {
    /// Peers whose replacement link did not come in time are down after all.
    pub(super) fn expire_replacements(&mut self, now: Now) {
        let mut due: Vec<PeerId> =
            self.replacing.iter().filter(|(_, &(t, _, _))| t <= now.mono_ms).map(|(p, _)| p.clone()).collect();
        due.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for peer in due {
            if let Some((_, conn, reason)) = self.replacing.remove(&peer) {
                self.event(Event::PeerDown { conn, peer, reason });
            }
        }
    }
}

/// The network behind a protocol id we do not share, when it is a
/// well-known name or one near ours (the handshake carries only a hash):
/// py2p's and rs2p's defaults, and our subnet's leasing variants, with
/// either encryption.
fn guess_network(ours: &Protocol, theirs: &[u8]) -> Option<Protocol> {
    let stem = ours.subnet.trim_end_matches(['0', '1']);
    let names = ["mesh", "sync0", "sync1", "chord", "kad", &ours.subnet, &format!("{stem}0"), &format!("{stem}1")];
    names
        .iter()
        .flat_map(|n| [Encryption::Plaintext, Encryption::Ssl].map(|e| Protocol::new(*n, e)))
        .find(|p| p.id().as_bytes() == theirs)
}
