//! Routed replies: whispering to a node we are not connected to.
//!
//! The asker floods a route *request* `[request_id, wanted]`; a node
//! connected to `wanted` answers on the link the request came in with a
//! route *response* `[request_id, [addr, wanted]]`, which floods back; the
//! asker dials the address and delivers the reply once the handshake is
//! done. Replies wait at most [`super::Config::reply_timeout_ms`].

use rmpv::Value;

use super::{CommandError, ConnId, Mesh, ReplyRoute};
use crate::addr::PeerAddr;
use crate::id::PeerId;
use crate::wire::message::{bytes_of, MeshMessage};
use crate::wire::{Frame, MsgType, SubFlag};
use crate::Now;

/// A reply waiting for its route (or for the handshake with its target).
#[derive(Debug)]
pub(super) struct PendingReply {
    pub(super) to: PeerId,
    pub(super) frame: Frame,
    pub(super) deadline_ms: u64,
}

impl Mesh {
    pub(super) fn reply(&mut self, now: Now, to: &PeerId, packets: &[Value]) -> Result<ReplyRoute, CommandError> {
        if self.routing.contains_key(to) {
            self.whisper(now, to, SubFlag::Whisper.code(), packets)?;
            return Ok(ReplyRoute::Direct);
        }
        if self.requests.len() >= self.cfg.max_pending_replies {
            return Err(CommandError::TooManyPending);
        }
        let frame = Frame::build(MsgType::Whisper, &self.cfg.id, now.unix(), SubFlag::Whisper, packets);
        self.check_size(&frame)?;
        let mut raw = [0u8; 24];
        rand::Rng::fill(&mut self.rng, &mut raw[..]);
        let request_id = crate::id::b58encode_int(&raw);
        let deadline_ms = now.mono_ms + self.cfg.reply_timeout_ms;
        self.requests.insert(request_id.clone().into_bytes(), PendingReply { to: to.clone(), frame, deadline_ms });
        self.reply_deadlines.push_back(deadline_ms);
        let request = MeshMessage::RouteRequest { request_id: Value::from(request_id), wanted: to.clone() };
        let frame = request.encode(&self.cfg.id, now.unix());
        self.broadcast_frame(now, frame);
        Ok(ReplyRoute::Routing)
    }

    /// Someone looks for `wanted`: if it is our peer, say where it is.
    pub(super) fn on_route_request(&mut self, now: Now, conn: ConnId, request_id: Value, wanted: &PeerId) {
        let Some(addr) = self.routing.get(wanted).and_then(|c| self.conns.get(c)).and_then(|c| c.addr.clone()) else {
            return;
        };
        // A response is a broadcast: it floods back to the asker from here.
        let frame =
            MeshMessage::RouteResponse { request_id, addr, id: wanted.clone() }.encode(&self.cfg.id, now.unix());
        self.dissemination.mark_seen(now, &frame.id());
        self.send_signed_on(now, conn, frame);
    }

    /// Someone knows where our reply's target is: dial it (the reply goes
    /// out once the handshake is done).
    pub(super) fn on_route_response(&mut self, request_id: Value, addr: PeerAddr, id: PeerId) {
        let Some(token) = bytes_of(&request_id) else { return };
        if self.requests.get(token).is_none_or(|p| p.to != id) {
            return;
        }
        let Some(pending) = self.requests.remove(token) else { return };
        if let Some(&conn) = self.routing.get(&pending.to) {
            self.send_user(conn, pending.frame);
            return;
        }
        let to = pending.to.clone();
        self.deferred.entry(to.clone()).or_default().push(pending);
        let already = self.dials.values().any(|d| d.expected.as_ref() == Some(&to));
        if !already && addr != self.cfg.out_addr {
            self.dial(addr, Some(to), None);
        }
    }

    /// Drops replies whose route did not come in time.
    pub(super) fn expire_replies(&mut self, now: Now) {
        while self.reply_deadlines.front().is_some_and(|&t| t <= now.mono_ms) {
            self.reply_deadlines.pop_front();
        }
        self.requests.retain(|_, r| r.deadline_ms > now.mono_ms);
        self.deferred.retain(|_, v| {
            v.retain(|r| r.deadline_ms > now.mono_ms);
            !v.is_empty()
        });
    }
}
