//! How a link encodes frames, and py2p's renegotiation of it.
//!
//! After the handshake each side compresses with the first method in its
//! own preference list that the peer advertised. A peer that advertises
//! rs2p's [`Compression::Identity`] is rs2p: frames to it go uncompressed
//! and may share one write. Renegotiation (`[1, .., 0x01, [methods]]`)
//! replaces the peer's list and is answered only when the list changed, so
//! two nodes never ping-pong; a resend request (`0x09`) resends the last
//! user frame once and never asks back.

use super::{ConnId, Mesh, Output};
use crate::wire::message::MeshMessage;
use crate::wire::{capability, Compression};
use crate::Now;

/// How a link encodes outgoing frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkCodec {
    /// Compression applied to each frame body (`None`: uncompressed).
    pub compression: Option<Compression>,
    /// Whether several frames may share one write. Only for peers known to
    /// be rs2p: py2p's reader mishandles a read that ends exactly after a
    /// length prefix, so toward py2p each frame is written on its own.
    pub coalesce: bool,
}

impl LinkCodec {
    /// The codec of a link before its handshake: uncompressed, one frame per
    /// write.
    pub const HANDSHAKE: LinkCodec = LinkCodec { compression: None, coalesce: false };
}

/// Whether a peer's method list marks it as rs2p (the one place this is
/// decided).
pub(crate) fn is_rs2p(methods: &[u64]) -> bool {
    methods.contains(&capability::RS2P)
}

/// Whether a peer's method list says it speaks the broadcast tree.
pub(crate) fn speaks_tree(methods: &[u64]) -> bool {
    methods.contains(&capability::TREE)
}

/// The codec toward a peer that accepts `peer_methods`, given our
/// preference order.
pub(crate) fn codec_for(ours: &[Compression], peer_methods: &[u64]) -> LinkCodec {
    let compression = ours.iter().copied().find(|m| peer_methods.contains(&u64::from(m.code())));
    debug_assert_eq!(u64::from(Compression::Identity.code()), capability::RS2P);
    LinkCodec { compression: compression.filter(|m| *m != Compression::Identity), coalesce: is_rs2p(peer_methods) }
}

impl Mesh {
    /// `[1, .., 0x01, [methods]]`: the peer's new method list.
    pub(super) fn on_compression(&mut self, now: Now, conn: ConnId, methods: Vec<u64>) {
        let codec = codec_for(&self.cfg.compression, &methods);
        let ours: Vec<u64> =
            self.cfg.compression.iter().map(|m| u64::from(m.code())).filter(|m| methods.contains(m)).collect();
        let Some(c) = self.conns.get_mut(&conn) else { return };
        let respond = c.peer_methods != methods;
        c.peer_methods = methods;
        c.codec = codec;
        self.out.push_back(Output::Configure { conn, codec });
        if respond {
            let frame = MeshMessage::Compression(ours).encode(&self.cfg.id, now.unix());
            self.send(conn, frame);
        }
    }

    /// `[1, .., 0x09]`: resend the last user frame, once.
    pub(super) fn on_resend(&mut self, conn: ConnId) {
        if let Some(f) = self.conns.get(&conn).and_then(|c| c.last_user.clone()) {
            self.send(conn, f);
        }
    }

    /// The methods we advertise, as wire values, then the capabilities.
    pub(super) fn advertised_methods(&self) -> Vec<u64> {
        let mut m: Vec<u64> = self.cfg.compression.iter().map(|m| u64::from(m.code())).collect();
        if self.cfg.broadcast == super::Broadcast::Tree {
            m.push(capability::TREE);
        }
        if self.cfg.identity.is_some() {
            m.push(capability::AUTH);
            if self.cfg.sign_broadcasts {
                m.push(capability::SIGNED);
            }
        }
        // Checking and relaying others' signatures needs no key.
        m.push(capability::CHECKS);
        m
    }
}
