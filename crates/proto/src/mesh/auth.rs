//! Proving ids on rs2p links, and private networks.
//!
//! A node with a key ([`super::Config::identity`]) advertises
//! [`capability::AUTH`] in its handshake. When both ends do, the link is
//! not up at the handshake: each end sends a random 32-byte challenge
//! (whisper `0x27`), and answers the other's with its public key and its
//! signature over [`auth_context`] (the network, both ids and the
//! challenge). A proof whose key does not hash to the id the handshake
//! claimed, or whose signature does not verify, closes the link
//! ([`AuthFailure`]); a valid one brings the link up, and is acknowledged
//! (`AuthOk`): a `connect` returns only once the peer's acknowledgement
//! came, so that both ends count the link (a broadcast sent right after
//! `connect` is not relayed past a peer that does not know the link yet).
//! Frames the peer sends while we check its proof (it may have accepted
//! ours first) are held, at most [`MAX_HELD`], and handled once the link is
//! up.
//!
//! Proofs are demanded, and links refused without one, for:
//! - a private network ([`super::Config::allow`]): only listed ids, proven;
//!   a py2p peer (no key) cannot join one;
//! - a dial that must reach a given id ([`super::Command::ConnectProven`]).
//!
//! Otherwise a peer without `AUTH` (py2p, or an rs2p node without a key)
//! links as in py2p, on its word.
//!
//! What a proof does not give, on a plaintext link: a node in the middle
//! can pass challenges and proofs between two honest nodes and then relay
//! their traffic; it learns and can alter what they say, but cannot claim
//! an id whose owner is not at the other end. TLS hides the traffic, and
//! the proof is not bound to the TLS session.

use super::conn::ConnState;
use super::{CloseReason, ConnId, Mesh, Output, Reply};
use crate::id::PeerId;
use crate::identity::{self, VerifyError};
use crate::wire::capability;
use crate::wire::message::{Handshake, MeshMessage};
use crate::wire::Packet;
use crate::Now;
use rand::Rng;

/// Most frames held from a peer that is still proving its id.
pub const MAX_HELD: usize = 256;

/// A link whose peer is proving its id.
#[derive(Debug)]
pub(crate) struct Proving {
    /// The peer's handshake, applied once it has proven its id.
    pub(super) handshake: Handshake,
    /// The challenge we sent.
    pub(super) nonce: [u8; 32],
    /// Frames that arrived meanwhile.
    pub(super) held: Vec<Packet>,
    /// Whether the peer already accepted our proof.
    pub(super) peer_ok: bool,
}

/// Why a peer's id was not accepted on a link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// The peer cannot prove an id (a py2p node, or rs2p without a key),
    /// and this link needs a proven one.
    #[error("the peer cannot prove its id ({claimed}), and this link needs a proven one")]
    Unproven {
        /// The id it claimed.
        claimed: PeerId,
    },
    /// The peer does not sign its broadcasts (a py2p node, or rs2p without
    /// a key), and this node requires signed messages.
    #[error("the peer ({claimed}) does not sign its messages, and this node requires signed ones")]
    Unsigned {
        /// The id it claimed.
        claimed: PeerId,
    },
    /// The peer's id is not on this private network's list.
    #[error("{claimed} is not allowed on this private network")]
    NotAllowed {
        /// The id it claimed.
        claimed: PeerId,
    },
    /// The peer is not the one dialed for.
    #[error("expected {expected}, but the peer is {claimed}")]
    WrongPeer {
        /// The id the dial asked for.
        expected: PeerId,
        /// The id the peer claimed.
        claimed: PeerId,
    },
    /// The peer's proof failed: its key is not the claimed id's, or the
    /// signature is wrong. An impostor.
    #[error("the peer claiming {claimed} failed to prove it: {why}")]
    BadProof {
        /// The id it claimed.
        claimed: PeerId,
        /// What failed.
        why: VerifyError,
    },
}

/// What a prover signs: the network's protocol id, the prover's id, the
/// challenger's id and the challenge, each length-prefixed, after a
/// domain tag. The ids make a proof useless on another link; the
/// challenge makes it useless later.
pub fn auth_context(protocol_id: &[u8], prover: &PeerId, challenger: &PeerId, nonce: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(160);
    m.extend_from_slice(b"rs2p link proof v1\0");
    for part in [protocol_id, prover.as_bytes(), challenger.as_bytes(), nonce.as_slice()] {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part);
    }
    m
}

impl Mesh {
    /// Whether this node proves its id (and asks for proofs).
    pub(super) fn proves(&self) -> bool {
        self.cfg.identity.is_some()
    }

    /// After a handshake passed the network and self checks: refuse it,
    /// start the proof, or bring the link up.
    pub(super) fn admit(&mut self, now: Now, conn: ConnId, hs: Handshake) {
        let claimed = hs.id.clone();
        let both_prove = self.proves() && hs.methods.contains(&capability::AUTH);
        let must_prove = self.conns.get(&conn).and_then(|c| c.must_prove.clone());
        if let Some(expected) = &must_prove {
            if *expected != claimed {
                return self.refuse(conn, AuthFailure::WrongPeer { expected: expected.clone(), claimed });
            }
        }
        if let Some(allow) = &self.cfg.allow {
            if !allow.contains(&claimed) {
                return self.refuse(conn, AuthFailure::NotAllowed { claimed });
            }
        }
        if self.cfg.require_signed && !hs.methods.contains(&capability::SIGNED) {
            return self.refuse(conn, AuthFailure::Unsigned { claimed });
        }
        if !both_prove {
            if self.cfg.allow.is_some() || must_prove.is_some() {
                return self.refuse(conn, AuthFailure::Unproven { claimed });
            }
            return self.establish(now, conn, hs);
        }
        let nonce: [u8; 32] = self.rng.random();
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.state =
            ConnState::Authenticating(Box::new(Proving { handshake: hs, nonce, held: Vec::new(), peer_ok: false }));
        c.awaits_peer_ok = true;
        // The payload lane, as the handshake: a control frame could
        // overtake our handshake, which must come first.
        let frame = MeshMessage::AuthChallenge(nonce).encode(&self.cfg.id, now.unix());
        self.send(conn, frame);
    }

    /// A frame on a link whose peer is proving its id.
    pub(super) fn on_proving(&mut self, now: Now, conn: ConnId, packet: Packet) {
        match MeshMessage::decode(&packet) {
            Ok(Some(MeshMessage::AuthChallenge(nonce))) => self.answer_challenge(now, conn, &nonce),
            Ok(Some(MeshMessage::AuthProof { key, signature })) => self.check_proof(now, conn, &key, &signature),
            Err(e) if packet.header.is(crate::wire::MsgType::Whisper, crate::wire::SubFlag::Auth) => {
                self.violation(conn, e.0)
            }
            Ok(Some(MeshMessage::AuthOk)) => {
                if let Some(ConnState::Authenticating(p)) = self.conns.get_mut(&conn).map(|c| &mut c.state) {
                    p.peer_ok = true;
                }
            }
            // A peer that brought the link up first may close it as the
            // loser of the conflict rule: hear why now, not after.
            Ok(Some(MeshMessage::Goodbye(why))) => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.farewell = Some(why);
                }
            }
            _ => {
                let Some(c) = self.conns.get_mut(&conn) else { return };
                let ConnState::Authenticating(p) = &mut c.state else { return };
                if p.held.len() >= MAX_HELD {
                    return self.violation(conn, "too many frames before proving its id");
                }
                p.held.push(packet);
            }
        }
    }

    fn answer_challenge(&mut self, now: Now, conn: ConnId, nonce: &[u8; 32]) {
        let Some(me) = &self.cfg.identity else { return };
        let Some(c) = self.conns.get(&conn) else { return };
        let ConnState::Authenticating(p) = &c.state else { return };
        let context = auth_context(self.protocol_id.as_bytes(), &self.cfg.id, &p.handshake.id, nonce);
        let proof = MeshMessage::AuthProof { key: me.public_key(), signature: me.sign(&context) };
        let frame = proof.encode(&self.cfg.id, now.unix());
        self.send(conn, frame);
    }

    fn check_proof(&mut self, now: Now, conn: ConnId, key: &[u8; 32], signature: &[u8; 64]) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let ConnState::Authenticating(p) = &c.state else { return };
        let claimed = p.handshake.id.clone();
        let context = auth_context(self.protocol_id.as_bytes(), &claimed, &self.cfg.id, &p.nonce);
        if let Err(why) = identity::verify(&claimed, key, &context, signature) {
            return self.refuse(conn, AuthFailure::BadProof { claimed, why });
        }
        let ConnState::Authenticating(p) = std::mem::replace(&mut c.state, ConnState::Handshaking) else {
            unreachable!("checked above")
        };
        let Proving { handshake, held, peer_ok, .. } = *p;
        tracing::debug!(conn = conn.0, peer = %claimed, "id proven");
        c.proven = true;
        if handshake.methods.contains(&capability::SIGNED) {
            // From now on its unsigned broadcasts are forgeries.
            self.signing.learn(&claimed);
        }
        // Told before anything else this end sends on the link.
        let ok = MeshMessage::AuthOk.encode(&self.cfg.id, now.unix());
        self.send(conn, ok);
        self.establish(now, conn, handshake);
        if peer_ok {
            self.on_peer_ok(conn);
        }
        for packet in held {
            if !self.conns.contains_key(&conn) {
                break;
            }
            self.on_packet(now, conn, packet);
        }
    }

    /// The peer counts the link: a `connect` waiting for that returns.
    pub(super) fn on_peer_ok(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let Some(peer) = c.peer().cloned() else { return };
        if !std::mem::take(&mut c.awaits_peer_ok) {
            return;
        }
        if let Some(request) = c.request.take() {
            self.out.push_back(Output::Reply { request, result: Ok(Reply::Connected(peer)) });
        }
    }

    fn refuse(&mut self, conn: ConnId, why: AuthFailure) {
        tracing::info!(conn = conn.0, %why, "refusing link");
        self.stats.refused_ids += 1;
        self.close(conn, CloseReason::Auth(why));
    }

    /// Whether a broadcast from `sender` may be delivered and relayed: on a
    /// private network, only the listed ids' (links are proven, but a
    /// listed peer could relay, or make up, a stranger's message).
    pub(super) fn sender_allowed(&mut self, sender: &PeerId) -> bool {
        match &self.cfg.allow {
            Some(allow) if !allow.contains(sender) => {
                self.stats.rejected += 1;
                false
            }
            _ => true,
        }
    }
}
