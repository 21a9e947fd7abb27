//! Noticing a peer that vanished without closing its connection.
//!
//! On tree links (rs2p peers that negotiated [`crate::wire::capability::TREE`])
//! any frame is a sign of life. Each end sends a heartbeat (an unasked
//! pong, in the control lane) every [`super::Config::keepalive_interval_ms`];
//! a link that brought nothing for that long is also sent a ping (which the
//! peer answers with a pong); one that brought nothing for
//! [`super::Config::dead_after_ms`] is closed as
//! [`CloseReason::Unresponsive`], and the mesh routes around it.
//!
//! Heartbeats, not only answers to pings, because a peer busy reading a long
//! burst from us reaches our ping only after everything we sent before it:
//! measured, answers alone let a burst of a few seconds pass for death. Its
//! own heartbeats travel the other way, ahead of anything it queued, so a
//! busy peer is never declared dead while it runs. And while the driver
//! does not read (backpressure), nobody's silence counts
//! ([`super::Input::NotReading`]). py2p peers get no
//! keepalives: py2p reserves ping and pong and does not answer them.

use super::{CloseReason, ConnId, Mesh};
use crate::wire::message::MeshMessage;
use crate::Now;

/// How often tree links are checked for silence.
const LIVENESS_CHECK_MS: u64 = 500;

impl Mesh {
    /// Pings silent tree links, closes dead ones.
    pub(super) fn check_liveness(&mut self, now: Now) {
        if self.cfg.keepalive_interval_ms == 0 || self.tree_links == 0 || now.mono_ms < self.next_liveness_ms {
            return;
        }
        self.next_liveness_ms = now.mono_ms + LIVENESS_CHECK_MS;
        let mut dead: Vec<(ConnId, u64)> = Vec::new();
        let mut ping: Vec<ConnId> = Vec::new();
        let mut heartbeat: Vec<ConnId> = Vec::new();
        for (&id, c) in self.conns.iter_mut() {
            if !c.tree || c.peer().is_none() {
                continue;
            }
            let silent = now.mono_ms.saturating_sub(c.last_rx_ms);
            if silent >= self.cfg.dead_after_ms {
                dead.push((id, silent));
                continue;
            }
            if silent >= self.cfg.keepalive_interval_ms && !c.pinged {
                c.pinged = true;
                ping.push(id);
            } else if now.mono_ms >= c.next_heartbeat_ms {
                heartbeat.push(id);
            }
            if now.mono_ms >= c.next_heartbeat_ms {
                c.next_heartbeat_ms = now.mono_ms + self.cfg.keepalive_interval_ms;
            }
        }
        dead.sort_unstable();
        ping.sort_unstable();
        heartbeat.sort_unstable();
        for (conn, silent_ms) in dead {
            self.stats.unresponsive += 1;
            tracing::info!(conn = conn.0, silent_ms, "closing a silent peer");
            self.close(conn, CloseReason::Unresponsive { silent_ms });
        }
        for conn in ping {
            let frame = MeshMessage::Ping.encode(&self.cfg.id, now.unix());
            self.send_control(conn, frame);
        }
        for conn in heartbeat {
            let frame = MeshMessage::Pong.encode(&self.cfg.id, now.unix());
            self.send_control(conn, frame);
        }
    }
}
