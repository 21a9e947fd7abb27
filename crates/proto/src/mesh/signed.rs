//! Signed broadcasts: which messages really come from the node they name.
//!
//! A node with a key ([`super::Config::identity`], and
//! [`super::Config::sign_broadcasts`]) signs what it originates. One
//! Ed25519 signature per message would cost every node tens of µs per
//! message, so the signature covers a *batch*: the ids of the broadcasts
//! one input produced (a message id is the SHA-256 of the whole payload,
//! so it binds the sender, the time and the packets). At the end of the
//! input the node floods a signature message (sub-flag `0x28`:
//! `[public_key, signature, ids]`) and then the broadcasts themselves, so a
//! receiver usually knows a message is vouched for before it arrives. The
//! signature message is an ordinary broadcast to the dissemination strategy
//! (deduplicated, relayed along the tree, announced and grafted like any
//! other), but it only goes to peers that advertise
//! [`capability::CHECKS`] (every rs2p node, whether it signs its own or
//! not): py2p peers receive exactly what they always did.
//!
//! A receiver checks a signature message once (never a duplicate), before
//! relaying it: the key must hash to the header's sender
//! ([`crate::identity::id_of_key`]; kept once checked, so the next batch
//! of that sender costs one signature check) and sign
//! [`signatures_context`]. A bad one is dropped, counted and logged, and
//! goes no further: one forgery costs one check, at the first rs2p node it
//! reaches, not one at every node. Since an rs2p node relays only good
//! signatures, a bad one from a peer that advertises
//! [`capability::CHECKS`] closes that link (a protocol violation). A good
//! one teaches that the sender is *keyed*; so does a peer proving its id on
//! a link ([`super::auth`]).
//!
//! (Relaying first and checking after was tried: on one machine it changed
//! no latency, since the CPU and not the path is the limit there, and it
//! let one forged signature cost a check at every node.)
//!
//! A broadcast is then delivered as:
//! - **verified**, when a checked signature message of its header's sender
//!   listed its id;
//! - **held**, when its sender is keyed (or the node requires signatures,
//!   [`super::Config::require_signed`]) but no signature covers it yet: it
//!   waits up to [`super::Config::signature_wait_ms`] for one (it may have
//!   overtaken its signature on another path), then is dropped, counted in
//!   [`super::Stats::rejected`] and logged;
//! - **unverified** otherwise: a sender never seen signing (a py2p node), or
//!   a message that crossed a py2p relay (py2p is never sent signature
//!   messages, so the signature stays behind) from a node this one does not
//!   know as keyed yet.
//!
//! Relaying does not wait for verification (relays pass original bytes,
//! so the signature still holds at the next rs2p node); delivery does.
//! A replay is refused by the window every broadcast is held to (header
//! time within [`super::Config::broadcast_window_secs`], which the
//! signature covers) and by deduplication inside it.

use std::collections::{HashMap, VecDeque};

use super::{ConnId, Mesh};
use crate::id::{MsgId, PeerId};
use crate::identity::{self, VerifyingKey};
use crate::wire::message::{ids_bytes, MeshMessage, MAX_IDS_PER_MESSAGE};
use crate::wire::{capability, Frame, Packet};
use crate::Now;

/// Most messages held at once waiting for a signature; past it, unsigned
/// messages from keyed senders are dropped at once.
pub const MAX_HELD_UNSIGNED: usize = 16_384;

/// Most signed ids remembered before their message arrives (in each of the
/// two generations); past it, the older generation is forgotten early
/// (its messages, if they come, wait and are dropped).
pub const MAX_SIGNED_WAITING: usize = 1 << 18;

/// Most identities remembered as keyed; past it, new ones are not added
/// (their unsigned messages are then delivered, marked unverified).
pub const MAX_KEYED: usize = 1 << 16;

/// What a node signs for a batch of its broadcasts: a domain tag, the
/// network's protocol id (length-prefixed), and the ids side by side.
pub fn signatures_context(protocol_id: &[u8], ids: &[MsgId]) -> Vec<u8> {
    let mut m = Vec::with_capacity(40 + protocol_id.len() + 32 * ids.len());
    m.extend_from_slice(b"rs2p broadcast signatures v1\0");
    m.extend_from_slice(&(protocol_id.len() as u32).to_be_bytes());
    m.extend_from_slice(protocol_id);
    m.extend_from_slice(&ids_bytes(ids));
    m
}

/// The signing and checking state of a node.
#[derive(Debug, Default)]
pub(super) struct Signing {
    /// Our broadcasts of the current input, sent behind their signature.
    outbox: Vec<Frame>,
    /// Identities known to sign, with their checked key once one of their
    /// signatures was checked (the next need not hash the key again).
    keyed: HashMap<PeerId, Option<VerifyingKey>>,
    /// Ids a checked signature vouched for whose message has not arrived
    /// yet, with a tag of their signer ([`Signing::tag`]): two generations,
    /// the current first. A generation lives
    /// [`super::Config::signature_wait_ms`]; an arriving message takes its
    /// id out, so only ids whose message is late or lost stay.
    signed: [HashMap<MsgId, u64>; 2],
    /// When the current generation becomes the older one (monotonic ms).
    next_generation_ms: u64,
    /// Keys the signer tags (random per node).
    tags: std::hash::RandomState,
    /// Messages of keyed senders waiting for their signature (detached from
    /// their read buffers).
    held: HashMap<MsgId, (ConnId, Packet)>,
    /// `held`, oldest first, with when each is dropped (monotonic ms).
    held_order: VecDeque<(u64, MsgId)>,
    /// When a dropped message may next be logged at info level.
    next_log_ms: u64,
    /// Identities learned as keyed since [`Mesh::take_newly_keyed`].
    newly_keyed: Vec<PeerId>,
}

impl Signing {
    /// Remembers `id` as keyed.
    pub(super) fn learn(&mut self, id: &PeerId) {
        if self.keyed.len() < MAX_KEYED && !self.keyed.contains_key(id) {
            self.keyed.insert(id.clone(), None);
            self.newly_keyed.push(id.clone());
        }
    }

    /// Whether `id` is known to sign.
    pub(super) fn is_keyed(&self, id: &PeerId) -> bool {
        self.keyed.contains_key(id)
    }

    /// A 64-bit tag of a signer: an id vouched for by one signer does not
    /// verify a message of another.
    fn tag(&self, id: &PeerId) -> u64 {
        std::hash::BuildHasher::hash_one(&self.tags, id.as_bytes())
    }

    /// Takes `id` out of the signed ids: whether `sender` signed it.
    fn take_signed(&mut self, id: &MsgId, sender: &PeerId) -> bool {
        if self.signed[0].is_empty() && self.signed[1].is_empty() {
            return false;
        }
        let tag = self.tag(sender);
        for generation in &mut self.signed {
            if generation.get(id) == Some(&tag) {
                generation.remove(id);
                return true;
            }
        }
        false
    }

    /// The older generation of signed ids is forgotten, the current one
    /// becomes the older.
    fn next_generation(&mut self, now_ms: u64, period_ms: u64) {
        let [current, older] = &mut self.signed;
        std::mem::swap(current, older);
        current.clear();
        self.next_generation_ms = now_ms + period_ms;
    }

    /// When the next held message expires, or the signed ids age.
    pub(super) fn poll_timeout(&self) -> Option<u64> {
        let held = self.held_order.front().map(|e| e.0);
        let signed = (!self.signed[0].is_empty() || !self.signed[1].is_empty()).then_some(self.next_generation_ms);
        held.into_iter().chain(signed).min()
    }
}

impl Mesh {
    /// The identities learned as keyed (from a checked signature or a link
    /// proof) since the last call: the sync replica takes them, so records
    /// of their writes must carry proofs.
    pub fn take_newly_keyed(&mut self) -> Vec<PeerId> {
        std::mem::take(&mut self.signing.newly_keyed)
    }

    /// Remembers `id` as keyed (known to sign), as a checked signature or
    /// a link proof would teach it: for a driver that kept the knowledge
    /// (a restored dictionary's proven writers).
    pub fn learn_keyed(&mut self, id: &PeerId) {
        self.signing.learn(id);
    }

    /// Whether this node signs its broadcasts.
    pub(super) fn signs(&self) -> bool {
        self.cfg.sign_broadcasts && self.cfg.identity.is_some()
    }

    /// Queues our broadcast `frame` to go out at the end of the input,
    /// behind its signature (or now, unsigned, if this node does not sign).
    pub(super) fn publish_own(&mut self, now: Now, frame: Frame) {
        if self.signs() {
            self.signing.outbox.push(frame);
        } else {
            self.publish_now(now, &frame, false);
        }
    }

    /// Signs and sends the broadcasts queued during this input: one
    /// signature message per [`MAX_IDS_PER_MESSAGE`] broadcasts, each ahead
    /// of the broadcasts it covers.
    pub(crate) fn flush_signed(&mut self, now: Now) {
        if self.signing.outbox.is_empty() {
            return;
        }
        let mut outbox = std::mem::take(&mut self.signing.outbox);
        for chunk in outbox.chunks(MAX_IDS_PER_MESSAGE) {
            if let Some(batch) = self.signature_message(now, chunk.iter().map(Frame::id).collect()) {
                self.publish_now(now, &batch, true);
            }
            for frame in chunk {
                self.publish_now(now, frame, false);
            }
        }
        // The buffer is kept for the next input.
        outbox.clear();
        self.signing.outbox = outbox;
    }

    /// Our signature message over `ids` (none without a key).
    fn signature_message(&self, now: Now, ids: Vec<MsgId>) -> Option<Frame> {
        let me = self.cfg.identity.as_ref()?;
        let signature = me.sign(&signatures_context(self.protocol_id.as_bytes(), &ids));
        Some(MeshMessage::Signatures { key: me.public_key(), signature, ids }.encode(&self.cfg.id, now.unix()))
    }

    /// Sends our broadcast `frame` on `conn` only (a route response, which
    /// floods back from there), behind its own signature if the peer takes
    /// signatures.
    pub(super) fn send_signed_on(&mut self, now: Now, conn: ConnId, frame: Frame) {
        if self.signs() && self.takes_signatures(conn) {
            if let Some(batch) = self.signature_message(now, vec![frame.id()]) {
                self.dissemination.mark_seen(now, &batch.id());
                self.send(conn, batch);
            }
        }
        self.send(conn, frame);
    }

    /// Whether a signature message may go to `conn` (its peer checks them).
    pub(super) fn takes_signatures(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.peer_methods.contains(&capability::CHECKS))
    }

    /// A signature message arrived on `conn`: check it, once (never a
    /// duplicate), then relay it and deliver the held messages it vouches
    /// for.
    pub(super) fn on_signatures(&mut self, now: Now, conn: ConnId, packet: Packet) {
        if self.dissemination.has_seen(&packet.frame.id()) {
            self.stats.duplicates += 1;
            return;
        }
        let signer = packet.header.sender.clone();
        let checked = match MeshMessage::decode(&packet) {
            Ok(Some(MeshMessage::Signatures { key, signature, ids })) => {
                self.check_signature(&signer, &key, &ids, &signature).map(|()| ids).map_err(|e| e.as_reason())
            }
            _ => Err("malformed signature message"),
        };
        let ids = match checked {
            Ok(ids) => ids,
            Err(why) => {
                self.stats.bad_signatures += 1;
                self.reject(now, &signer, why);
                // A peer that checks signatures relays only good ones: a
                // bad one from it is its own doing. (From other links, a
                // py2p application's own use of the sub-flag is dropped,
                // not punished.)
                if self.takes_signatures(conn) {
                    self.violation(conn, "sent a bad signature message");
                }
                return;
            }
        };
        let origin = if self.routing.len() > 1 { self.routing.get(&signer).copied() } else { None };
        let mut pushes = std::mem::take(&mut self.pushes);
        self.dissemination.receive(now, conn, origin, &signer, &packet.frame, &mut pushes);
        self.apply_pushes(now, &mut pushes, true, true);
        self.pushes = pushes;
        if now.mono_ms >= self.signing.next_generation_ms {
            self.signing.next_generation(now.mono_ms, self.cfg.signature_wait_ms);
        }
        let tag = self.signing.tag(&signer);
        for id in ids {
            match self.signing.held.remove(&id) {
                Some((c, p)) if p.header.sender == signer => self.dispatch_broadcast(now, c, p, true),
                // Listed by someone else: not its signer's to vouch for.
                Some(other) => {
                    self.signing.held.insert(id, other);
                }
                None => {
                    if self.signing.signed[0].len() >= MAX_SIGNED_WAITING {
                        self.signing.next_generation(now.mono_ms, self.cfg.signature_wait_ms);
                    }
                    self.signing.signed[0].insert(id, tag);
                }
            }
        }
    }

    /// Checks `signer`'s signature over `ids`, with its key kept from a
    /// previous check when it is the same key.
    fn check_signature(
        &mut self,
        signer: &PeerId,
        key: &[u8; 32],
        ids: &[MsgId],
        signature: &[u8; 64],
    ) -> Result<(), identity::VerifyError> {
        let context = signatures_context(self.protocol_id.as_bytes(), ids);
        if let Some(Some(known)) = self.signing.keyed.get(signer) {
            if known.as_bytes() == key {
                return identity::verify_with(known, &context, signature);
            }
        }
        let checked = identity::key_of(signer, key)?;
        identity::verify_with(&checked, &context, signature)?;
        let room = self.signing.keyed.len() < MAX_KEYED || self.signing.keyed.contains_key(signer);
        if room && self.signing.keyed.insert(signer.clone(), Some(checked)).is_none() {
            self.signing.newly_keyed.push(signer.clone());
        }
        Ok(())
    }

    /// A fresh broadcast (not a signature message): deliver it now, or
    /// hold it for its signature.
    pub(super) fn check_signed(&mut self, now: Now, conn: ConnId, packet: Packet) {
        let id = packet.frame.id();
        let sender = &packet.header.sender;
        let verified = self.signing.take_signed(&id, sender);
        if verified || !(self.cfg.require_signed || self.signing.is_keyed(sender)) {
            return self.dispatch_broadcast(now, conn, packet, verified);
        }
        if self.signing.held.len() >= MAX_HELD_UNSIGNED {
            let sender = sender.clone();
            self.stats.unsigned += 1;
            return self.reject(now, &sender, "unsigned, and too many messages wait for signatures");
        }
        let deadline = now.mono_ms + self.cfg.signature_wait_ms;
        if self.signing.held.insert(id, (conn, packet.detached())).is_none() {
            self.signing.held_order.push_back((deadline, id));
        }
    }

    /// Drops held messages whose signature did not come in time, and ages
    /// the signed ids whose message did not.
    pub(super) fn expire_signed(&mut self, now: Now) {
        while let Some(&(deadline, id)) = self.signing.held_order.front() {
            if deadline > now.mono_ms {
                break;
            }
            self.signing.held_order.pop_front();
            if let Some((_, p)) = self.signing.held.remove(&id) {
                self.stats.unsigned += 1;
                let why = if self.cfg.require_signed {
                    "unsigned, and this node requires signatures"
                } else {
                    "unsigned, from a sender known to sign"
                };
                self.reject(now, &p.header.sender, why);
            }
        }
        if now.mono_ms >= self.signing.next_generation_ms {
            self.signing.next_generation(now.mono_ms, self.cfg.signature_wait_ms);
        }
    }

    /// Counts and logs a message dropped for its claimed sender: at info
    /// level once a second at most (a flood of forgeries must not flood
    /// the log), at debug level otherwise.
    fn reject(&mut self, now: Now, sender: &PeerId, why: &'static str) {
        self.stats.rejected += 1;
        if now.mono_ms >= self.signing.next_log_ms {
            self.signing.next_log_ms = now.mono_ms + 1_000;
            tracing::info!(%sender, why, rejected = self.stats.rejected, "dropping a broadcast");
        } else {
            tracing::debug!(%sender, why, "dropping a broadcast");
        }
    }
}
