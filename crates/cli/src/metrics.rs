//! `--metrics HOST:PORT`: the node's counters as Prometheus text at
//! `/metrics`, encoded by `prometheus-client` (OpenMetrics text, which
//! Prometheus scrapes natively).
//!
//! Each scrape asks the node for its [`rs2p::Status`] and encodes a fresh
//! registry from it: the node keeps its own counters, so nothing here can
//! drift from what `status` reports.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::node::Session;

/// The largest request read from a scraper; anything longer is cut.
const MAX_REQUEST_BYTES: usize = 8 << 10;

/// The content type of OpenMetrics text.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` and serves `/metrics` until the process ends.
pub async fn serve(addr: SocketAddr, session: Arc<Session>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot serve metrics on {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving metrics");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let session = session.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_REQUEST_BYTES];
                let n = match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("");
                let (status, ctype, body) = if path == "/metrics" || path.starts_with("/metrics?") {
                    match encode(&session).await {
                        Ok(body) => ("200 OK", CONTENT_TYPE, body),
                        Err(e) => ("503 Service Unavailable", "text/plain", format!("{e}\n")),
                    }
                } else {
                    ("404 Not Found", "text/plain", "try /metrics\n".to_string())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(body.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(())
}

/// The node's counters as OpenMetrics text.
pub async fn encode(session: &Session) -> Result<String, rs2p::Error> {
    let s = session.node.status().await?;
    let mut r = Registry::with_prefix("rs2p");
    let counter = |r: &mut Registry, name: &str, help: &str, v: u64| {
        let c: Counter = Counter::default();
        c.inc_by(v);
        r.register(name, help, c);
    };
    let gauge = |r: &mut Registry, name: &str, help: &str, v: u64| {
        let g: Gauge = Gauge::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        r.register(name, help, g);
    };
    gauge(&mut r, "peers", "Handshaken peers", s.peers as u64);
    gauge(&mut r, "connections", "Open connections, handshaken or not", s.connections as u64);
    gauge(&mut r, "uptime_seconds", "Seconds since the node started", session.started.elapsed().as_secs());
    counter(&mut r, "frames_in", "Frames received", s.frames_in);
    counter(&mut r, "frames_out", "Frames sent", s.frames_out);
    counter(&mut r, "bytes_in", "Bytes received (as on the wire)", s.bytes_in);
    counter(&mut r, "bytes_out", "Bytes sent (as on the wire)", s.bytes_out);
    counter(&mut r, "delivered", "User broadcasts handed to the application", s.delivered);
    counter(&mut r, "duplicates", "Broadcast copies received and suppressed", s.duplicates);
    counter(&mut r, "relayed", "Broadcasts relayed to peers", s.stats.relayed);
    counter(&mut r, "dropped_messages", "Messages dropped: the receive queue was full", s.dropped_messages);
    counter(&mut r, "dropped_frames", "Frames dropped: a lagging peer's queue was full", s.dropped_frames);
    counter(&mut r, "dropped_control", "Control frames dropped: a control lane was full", s.dropped_control);
    counter(&mut r, "slow_peers", "Peers disconnected for not draining their queue", s.slow_peers);
    counter(&mut r, "refused_connections", "Incoming connections refused at accept", s.refused_connections);
    counter(&mut r, "unresponsive_peers", "Peers declared dead after a silence", s.stats.unresponsive);
    counter(&mut r, "stale", "Broadcasts dropped: outside the 60 s window (replays included)", s.stats.stale);
    counter(&mut r, "refused_ids", "Links refused: the peer's id was not accepted", s.stats.refused_ids);
    let forged_writes = s.sync.map_or(0, |sync| sync.stats.forged_writes);
    counter(
        &mut r,
        "rejected",
        "Broadcasts and sync writes dropped for the identity they claim",
        s.stats.rejected + forged_writes,
    );
    counter(&mut r, "unsigned", "Of rejected: no valid signature from a sender known to sign", s.stats.unsigned);
    counter(&mut r, "bad_signatures", "Of rejected: forged or malformed signature messages", s.stats.bad_signatures);
    gauge(&mut r, "queued_messages", "Messages waiting in the receive queue", s.queued_messages as u64);
    gauge(&mut r, "queued_frames", "Frames waiting in peers' send queues", s.queued_frames as u64);
    gauge(&mut r, "queued_bytes", "Bytes waiting in peers' send queues", s.queued_bytes as u64);
    if let Some(t) = s.tree {
        counter(&mut r, "tree_grafts", "Broadcast tree grafts sent", t.grafts);
        counter(&mut r, "tree_prunes", "Broadcast tree prunes sent", t.prunes);
    }
    if let Some(sync) = s.sync {
        gauge(&mut r, "sync_keys", "Keys holding a value in the synced dictionary", sync.keys as u64);
        counter(&mut r, "sync_anti_entropy_rounds", "Anti-entropy rounds started", sync.stats.anti_entropy_rounds);
        counter(&mut r, "sync_entries_received", "Entries received through anti-entropy", sync.stats.entries_received);
        counter(
            &mut r,
            "sync_lease_refused",
            "Writes from peers refused by another node's lease",
            sync.stats.lease_refused,
        );
        counter(
            &mut r,
            "sync_bad_versions",
            "Writes from peers dropped: version outside their header's second",
            sync.stats.bad_versions,
        );
        counter(
            &mut r,
            "sync_forged_writes",
            "Of rejected: sync writes without their writer's valid proof",
            sync.stats.forged_writes,
        );
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &r).map_err(|_| rs2p::Error::Closed)?;
    Ok(text)
}
