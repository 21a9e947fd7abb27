//! What the node tells its user: messages and peer/sync events, as JSON
//! lines or as readable text, forwarded to an output queue.

use std::io::Write;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rs2p::json::{to_json, write_json_ref, write_str};
use rs2p::{Event, Message, PeerId, Value};
use serde_json::{json, Value as Json};
use tokio::sync::mpsc;

use crate::peer_book::PeerBook;

/// How many queued messages are turned into one batch of output lines.
const MESSAGE_BATCH: usize = 64;

/// How events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// One JSON object per line (the scripting contract).
    Json,
    /// Text for people.
    Human,
}

/// A key as JSON: a string when it is UTF-8, `{"$bytes": ...}` otherwise.
pub fn key_json(k: &[u8]) -> Json {
    match std::str::from_utf8(k) {
        Ok(s) => Json::String(s.to_string()),
        Err(_) => to_json(&Value::Binary(k.to_vec())),
    }
}

/// The first 12 characters of an id: enough to tell peers apart on screen.
pub fn short(id: &PeerId) -> String {
    id.to_string().chars().take(12).collect()
}

/// A `message` event, appended to `out` as one JSON line (without its
/// newline): written directly, not through a JSON tree, because every
/// message a node receives goes through here.
fn write_message_json(out: &mut Vec<u8>, m: &Message) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"{\"event\":\"message\",\"id\":\"");
    for b in m.id().0 {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
    out.extend_from_slice(b"\",\"kind\":\"");
    out.extend_from_slice(m.kind().as_str().as_bytes());
    out.extend_from_slice(b"\",\"sender\":");
    let sender = m.sender().as_bytes();
    // An id is base58 (py2p's ids, and ours): nothing to escape. Anything
    // else a peer calls itself goes the careful way.
    if sender.iter().all(u8::is_ascii_alphanumeric) {
        out.push(b'"');
        out.extend_from_slice(sender);
        out.push(b'"');
    } else {
        write_str(out, &String::from_utf8_lossy(sender));
    }
    out.extend_from_slice(b",\"time\":");
    let _ = write!(out, "{}", m.time());
    out.extend_from_slice(if m.verified() { b",\"verified\":true" } else { b",\"verified\":false" });
    out.extend_from_slice(b",\"packets\":[");
    // Borrowed from the frame: no owned copy of each packet on the way.
    if let Ok(packets) = m.raw().value_refs() {
        for (i, p) in packets.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_ref(out, p);
        }
    }
    out.extend_from_slice(b"]}");
}

fn message_text(m: &Message) -> String {
    let packets: Vec<String> = m.packets().unwrap_or_default().iter().map(packet_text).collect();
    format!("{} [{} from {}] {}", clock(), m.kind().as_str(), short(m.sender()), packets.join(" "))
}

/// A packet for people: text as itself (control characters escaped, so a
/// peer cannot drive the terminal), anything else as JSON.
fn packet_text(v: &Value) -> String {
    match v {
        Value::String(s) if s.as_str().is_some() => {
            let s = s.as_str().unwrap_or_default();
            if s.chars().any(|c| c.is_control() || c == '"') || s.is_empty() || s.starts_with(' ') || s.ends_with(' ') {
                Json::String(s.to_string()).to_string()
            } else {
                s.to_string()
            }
        }
        other => to_json(other).to_string(),
    }
}

/// The wall-clock time of day, `HH:MM:SS` (UTC).
pub fn clock() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("{:02}:{:02}:{:02}", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

fn event_line(e: Event, style: Style) -> Option<String> {
    Some(match (e, style) {
        (Event::PeerUp { peer, addr, outgoing }, Style::Json) => json!({
            "event": "peer_up", "id": peer.to_string(),
            "addr": addr.map(|a| a.to_string()), "outgoing": outgoing,
        })
        .to_string(),
        (Event::PeerDown { peer, reason }, Style::Json) => {
            json!({"event": "peer_down", "id": peer.to_string(), "reason": reason.to_string()}).to_string()
        }
        (Event::ConnectFailed { addr, reason }, Style::Json) => json!({
            "event": "connect_failed", "addr": addr.map(|a| a.to_string()), "reason": reason.to_string(),
        })
        .to_string(),
        (Event::PeerUp { peer, addr, outgoing }, Style::Human) => format!(
            "* peer up: {} at {} ({})",
            short(&peer),
            addr.map(|a| a.to_string()).unwrap_or_else(|| "?".into()),
            if outgoing { "we dialed" } else { "they dialed" }
        ),
        (Event::PeerDown { peer, reason }, Style::Human) => format!("* peer down: {} ({reason})", short(&peer)),
        (Event::ConnectFailed { addr, reason }, Style::Human) => {
            format!("* connection {}failed: {reason}", addr.map(|a| format!("to {a} ")).unwrap_or_default())
        }
        (Event::Lagged(n), Style::Human) => format!("* missed {n} events"),
        (Event::Lagged(n), Style::Json) => json!({"event": "lagged", "missed": n}).to_string(),
        (Event::Update { key, value, owner, timestamp }, Style::Json) => json!({
            "event": "update", "key": key_json(&key), "value": to_json(&value),
            "owner": owner.to_string(), "timestamp": timestamp,
        })
        .to_string(),
        (Event::Delete { key }, Style::Json) => json!({"event": "delete", "key": key_json(&key)}).to_string(),
        (Event::Update { key, value, owner, .. }, Style::Human) => {
            format!("* {} = {} (by {})", key_json(&key), to_json(&value), short(&owner))
        }
        (Event::Delete { key }, Style::Human) => format!("* {} deleted", key_json(&key)),
        _ => return None,
    })
}

/// Forwards messages and `events` (the node's peer events) to `out` until
/// the node stops, keeping `book` up to date on the way.
pub fn spawn_forwarders(
    node: &rs2p::MeshSocket,
    mut events: rs2p::EventStream,
    book: Arc<PeerBook>,
    out: mpsc::Sender<String>,
    style: Style,
) {
    let n = node.clone();
    let o = out.clone();
    let b = book.clone();
    tokio::spawn(async move {
        while let Some(first) = n.next_message().await {
            // Everything already queued goes out as one batch of lines.
            let mut batch = vec![first];
            batch.extend(n.recv(MESSAGE_BATCH));
            // Sized for the whole batch (base64 is 4/3 of the payload, plus
            // the id, sender and field names), so it is not regrown.
            let size: usize = batch.iter().map(|m| m.raw().frame.payload().len() * 4 / 3 + 256).sum();
            let mut lines = Vec::with_capacity(size);
            let mut last_sender: Option<&PeerId> = None;
            for m in &batch {
                // Once per run of one sender's messages (a lock each time).
                if last_sender != Some(m.sender()) {
                    b.heard_from(m.sender());
                    last_sender = Some(m.sender());
                }
                if !lines.is_empty() {
                    lines.push(b'\n');
                }
                match style {
                    Style::Json => write_message_json(&mut lines, m),
                    Style::Human => lines.extend_from_slice(message_text(m).as_bytes()),
                }
            }
            let lines = String::from_utf8(lines).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            if o.send(lines).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            match &e {
                Event::PeerUp { peer, .. } => book.up(peer),
                Event::PeerDown { peer, .. } => book.down(peer),
                // A user's connect reports its own failure.
                Event::ConnectFailed { addr: Some(a), .. } if book.failure_is_answered(&a.to_string()) => continue,
                _ => {}
            }
            let Some(line) = event_line(e, style) else { continue };
            if out.send(line).await.is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_packets_are_shown_plainly_unless_they_could_mislead() {
        assert_eq!(packet_text(&Value::from("hello world")), "hello world");
        assert_eq!(packet_text(&Value::from("red\u{1b}[31m")), r#""red\u001b[31m""#);
        assert_eq!(packet_text(&Value::from("")), r#""""#);
        assert_eq!(packet_text(&Value::from(" padded")), r#"" padded""#);
        assert_eq!(packet_text(&Value::from(42)), "42");
        assert_eq!(packet_text(&Value::Binary(vec![1])), r#"{"$bytes":"AQ=="}"#);
    }
}
