//! Shared helpers for integration tests: real py2p peers driven over JSON
//! lines, and bounded waits.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use rs2p::PeerAddr;
use serde_json::{json, Value as Json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// The Python of the pinned py2p virtualenv. A missing interpreter or py2p
/// fails the test with instructions; it never skips.
pub fn py2p_python() -> PathBuf {
    let path = std::env::var_os("RS2P_PY2P_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv-py2p/bin/python")));
    assert!(
        path.exists(),
        "py2p interop tests need the pinned py2p virtualenv at {}: run ./scripts/setup-py2p.sh \
         (or the README's test command, which does)",
        path.display()
    );
    path
}

/// A running py2p node (`tests/interop/py2p_peer.py`).
pub struct Py2p {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Json>,
    /// Lines read but not yet matched by [`Py2p::expect`].
    backlog: VecDeque<Json>,
    /// Its node id.
    pub id: String,
    /// Its address.
    pub addr: PeerAddr,
}

impl Py2p {
    /// Starts a py2p node with extra driver flags (`--subnet X`, `--sync`,
    /// `--no-leasing`, `--max-outgoing N`).
    pub async fn spawn(flags: &[&str]) -> Py2p {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/py2p_peer.py");
        let mut child = Command::new(py2p_python())
            .arg("-u")
            .arg(script)
            .args(flags)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the py2p peer");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel(10_000);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                match serde_json::from_str::<Json>(&l) {
                    Ok(j) => {
                        if tx.send(j).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => eprintln!("py2p peer printed: {l}"),
                }
            }
        });
        let mut p = Py2p {
            child,
            stdin,
            lines: rx,
            backlog: VecDeque::new(),
            id: String::new(),
            addr: PeerAddr::new("127.0.0.1", 0),
        };
        let ready = p.expect(15, |j| j["event"] == "ready").await;
        p.id = ready["id"].as_str().expect("id").to_string();
        p.addr = ready["addr"].as_str().expect("addr").parse().expect("HOST:PORT");
        p
    }

    /// Sends a command line.
    pub async fn cmd(&mut self, cmd: Json) {
        let mut line = cmd.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.expect("write to py2p peer");
        self.stdin.flush().await.expect("flush to py2p peer");
    }

    /// Sends a command and waits for its `ok` (or panics on its `error`).
    pub async fn run(&mut self, cmd: Json) {
        let name = cmd["cmd"].clone();
        self.cmd(cmd).await;
        let r = self.expect(10, |j| (j["event"] == "ok" || j["event"] == "error") && j["cmd"] == name).await;
        assert_eq!(r["event"], "ok", "py2p command failed: {r}");
    }

    /// Waits up to `secs` for a line matching `pred`, keeping the others.
    pub async fn expect(&mut self, secs: u64, pred: impl Fn(&Json) -> bool) -> Json {
        if let Some(pos) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(pos).expect("present");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(j)) => {
                    if pred(&j) {
                        return j;
                    }
                    self.backlog.push_back(j);
                }
                Ok(None) => panic!("py2p peer exited; unmatched lines: {:?}", self.backlog),
                Err(_) => panic!("timed out after {secs} s waiting on py2p; lines so far: {:?}", self.backlog),
            }
        }
    }

    /// Takes every buffered message event (waiting `ms` for stragglers).
    pub async fn messages(&mut self, ms: u64) -> Vec<Json> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        while let Ok(j) = self.lines.try_recv() {
            self.backlog.push_back(j);
        }
        let (msgs, rest): (Vec<Json>, Vec<Json>) = self.backlog.drain(..).partition(|j| j["event"] == "message");
        self.backlog = rest.into();
        msgs
    }

    /// Its routing table as `[{"id","addr","outgoing"}]`.
    pub async fn peers(&mut self) -> Vec<Json> {
        self.cmd(json!({"cmd": "peers"})).await;
        let j = self.expect(10, |j| j["event"] == "peers").await;
        j["peers"].as_array().cloned().unwrap_or_default()
    }

    /// py2p's `status` ("Nominal" or a list of tracebacks).
    pub async fn status(&mut self) -> Json {
        self.cmd(json!({"cmd": "status"})).await;
        self.expect(10, |j| j["event"] == "status").await["status"].clone()
    }

    /// Waits until the routing table satisfies `pred`.
    pub async fn wait_peers(&mut self, secs: u64, what: &str, pred: impl Fn(&[Json]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let peers = self.peers().await;
            if pred(&peers) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for py2p: {what}; peers {peers:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asks the peer to quit and waits for it to exit (killed after 5 s).
    pub async fn quit(mut self) {
        self.cmd(json!({"cmd": "quit"})).await;
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// Polls `cond` every 20 ms for up to `secs` seconds.
pub async fn wait_for<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The next queued message of an rs2p node, within 10 s.
pub async fn next_msg(n: &rs2p::MeshSocket) -> rs2p::Message {
    tokio::time::timeout(Duration::from_secs(10), n.next_message())
        .await
        .expect("message in time")
        .expect("node running")
}

/// The first `ConnectFailed` event's reason, within 10 s.
pub async fn next_connect_failed(events: &mut rs2p::EventStream) -> rs2p::CloseReason {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(rs2p::Event::ConnectFailed { reason, .. }) = events.recv().await {
                return reason;
            }
        }
    })
    .await
    .expect("a refusal event")
}

/// The UNIX time in ms.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A py2p-format handshake from `me` on the network `protocol_id`,
/// advertising `methods` (a raw socket's, in the hostile tests).
pub fn raw_handshake(me: &rs2p::PeerId, protocol_id: &[u8], methods: &[u64]) -> rs2p::proto::wire::Frame {
    use rs2p::proto::wire::{Frame, MsgType, SubFlag};
    use rs2p::Value;
    Frame::build(
        MsgType::Whisper,
        me,
        now_ms() / 1000,
        SubFlag::Handshake,
        &[
            Value::Binary(me.as_bytes().to_vec()),
            Value::Binary(protocol_id.to_vec()),
            Value::Array(vec![Value::from("127.0.0.1"), Value::from(1)]),
            Value::Array(methods.iter().map(|&m| Value::from(m)).collect()),
        ],
    )
}
