//! The `rs2p node --json` contract, driven through the real binary.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value as Json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

struct Node {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    backlog: Vec<Json>,
    id: String,
    addr: String,
}

impl Node {
    async fn spawn(extra: &[&str]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rs2p"))
            .args(["node", "--json", "--bind", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start rs2p node");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut n = Node { child, stdin, lines, backlog: Vec::new(), id: String::new(), addr: String::new() };
        let ready = n.expect(|j| j["event"] == "ready").await;
        n.id = ready["id"].as_str().unwrap().to_string();
        n.addr = ready["addr"].as_str().unwrap().to_string();
        n
    }

    async fn send_line(&mut self, line: &str) {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    async fn cmd(&mut self, j: Json) {
        self.send_line(&j.to_string()).await;
    }

    async fn expect(&mut self, pred: impl Fn(&Json) -> bool) -> Json {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("timed out; lines: {:?}", self.backlog))
                .unwrap()
                .expect("node exited");
            let j: Json = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
            if pred(&j) {
                return j;
            }
            self.backlog.push(j);
        }
    }

    async fn peers(&mut self) -> Vec<Json> {
        self.cmd(json!({"cmd": "peers"})).await;
        self.expect(|j| j["event"] == "peers").await["peers"].as_array().unwrap().clone()
    }

    async fn quit(mut self) {
        self.cmd(json!({"cmd": "quit"})).await;
        let status = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.expect("exits").unwrap();
        assert!(status.success());
    }
}

#[tokio::test]
async fn json_lines_contract() {
    let mut a = Node::spawn(&[]).await;
    assert!(a.addr.starts_with("127.0.0.1:"));
    let mut b = Node::spawn(&["--connect", &a.addr]).await;
    let up = b.expect(|j| j["event"] == "peer_up").await;
    assert_eq!(up["id"], json!(a.id));
    assert_eq!(up["outgoing"], json!(true));
    a.expect(|j| j["event"] == "peer_up").await;

    // Values of every kind cross unchanged, bin as {"$bytes"}.
    let packets = json!(["s", {"$bytes": "AAE="}, -5, 18446744073709551615u64, 2.5, 1.0, null, true,
                         [1, [2]], {"k": "v"}, {"$map": [[1, 2]]}]);
    a.cmd(json!({"cmd": "broadcast", "packets": packets})).await;
    let m = b.expect(|j| j["event"] == "message").await;
    assert_eq!(m["kind"], "broadcast");
    assert_eq!(m["sender"], json!(a.id));
    assert!(m["time"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(m["packets"], packets);

    b.cmd(json!({"cmd": "whisper", "to": a.id, "packets": ["psst"]})).await;
    let m = a.expect(|j| j["event"] == "message").await;
    assert_eq!((m["kind"].clone(), m["packets"].clone()), (json!("whisper"), json!(["psst"])));

    // Status: counters as the issue defines them (b got one broadcast; a's
    // own broadcast is not delivered to a, a whisper is not a broadcast).
    b.cmd(json!({"cmd": "status"})).await;
    let st = b.expect(|j| j["event"] == "status").await;
    assert_eq!((st["id"].clone(), st["peers"].clone()), (json!(b.id), json!(1)));
    assert_eq!((st["delivered"].clone(), st["duplicates"].clone()), (json!(1), json!(0)));
    for counter in ["frames_in", "frames_out", "bytes_in", "bytes_out"] {
        assert!(st[counter].as_u64().is_some_and(|n| n > 0), "{counter}: {st}");
    }
    a.cmd(json!({"cmd": "status"})).await;
    let st = a.expect(|j| j["event"] == "status").await;
    assert_eq!((st["id"].clone(), st["delivered"].clone()), (json!(a.id), json!(0)));
    assert!(st["frames_out"].as_u64().is_some_and(|n| n > 0), "{st}");

    let peers = a.peers().await;
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0]["id"], json!(b.id));
    assert_eq!(peers[0]["outgoing"], json!(false));

    // Malformed input: an error event, never a crash.
    for bad in [
        "{not json",
        "[1,2]",
        r#"{"cmd":"fly"}"#,
        r#"{"cmd":"whisper","to":"nobody","packets":[]}"#,
        r#"{"cmd":"broadcast","packets":[{"$bytes":"!!"}]}"#,
        r#"{"cmd":"connect","addr":"nowhere"}"#,
    ] {
        a.send_line(bad).await;
        let e = a.expect(|j| j["event"] == "error").await;
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{bad}: {e}");
    }
    // Connecting to a closed port reports the failure.
    a.cmd(json!({"cmd": "connect", "addr": "127.0.0.1:1"})).await;
    let e = a.expect(|j| j["event"] == "error" && j["cmd"] == "connect").await;
    assert!(e["message"].as_str().unwrap().contains("127.0.0.1:1"), "{e}");
    // Still alive and serving.
    assert_eq!(a.peers().await.len(), 1);

    // A foreign subnet is refused with a reason.
    let mut c = Node::spawn(&["--subnet", "other"]).await;
    c.cmd(json!({"cmd": "connect", "addr": a.addr})).await;
    let e = c.expect(|j| j["event"] == "error" && j["cmd"] == "connect").await;
    assert_eq!(
        e["message"].as_str().unwrap(),
        format!("connecting to {} failed: refused: wrong subnet \"mesh\" (ours \"other\")", a.addr)
    );

    let b_id = b.id.clone();
    b.quit().await;
    let down = a.expect(|j| j["event"] == "peer_down").await;
    assert_eq!(down["id"], json!(b_id));
    a.quit().await;
    c.quit().await;
}

#[tokio::test]
async fn json_lines_sync_contract() {
    let mut a = Node::spawn(&["--sync"]).await;
    let mut b = Node::spawn(&["--sync", "--connect", &a.addr]).await;
    b.expect(|j| j["event"] == "peer_up").await;
    a.expect(|j| j["event"] == "peer_up").await;

    a.cmd(json!({"cmd": "set", "key": "k", "value": {"x": [1, {"$bytes": "AQ=="}]}})).await;
    let u = b.expect(|j| j["event"] == "update").await;
    assert_eq!(u["key"], json!("k"));
    assert_eq!(u["value"], json!({"x": [1, {"$bytes": "AQ=="}]}));
    assert_eq!(u["owner"], json!(a.id));
    assert!(u["timestamp"].as_u64().unwrap() > 1_600_000_000);

    // A binary key that is not UTF-8 stays {"$bytes"}.
    a.cmd(json!({"cmd": "set", "key": {"$bytes": "/w=="}, "value": 1})).await;
    let u = b.expect(|j| j["event"] == "update" && j["key"] != json!("k")).await;
    assert_eq!(u["key"], json!({"$bytes": "/w=="}));

    b.cmd(json!({"cmd": "get", "key": "k"})).await;
    let v = b.expect(|j| j["event"] == "value").await;
    assert_eq!((v["found"].clone(), v["value"].clone()), (json!(true), json!({"x": [1, {"$bytes": "AQ=="}]})));
    b.cmd(json!({"cmd": "get", "key": "nope"})).await;
    let v = b.expect(|j| j["event"] == "value").await;
    assert_eq!(v["found"], json!(false));

    // b may not overwrite a's key: an error naming the key and the owner.
    // py2p's lease rule lets the lower id take a key written in the same
    // second (its tie-break), so b writes in a later second.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    b.cmd(json!({"cmd": "set", "key": "k", "value": 2})).await;
    let e = b.expect(|j| j["event"] == "error").await;
    assert_eq!((e["cmd"].clone(), e["key"].clone()), (json!("set"), json!("k")));
    assert!(e["message"].as_str().unwrap().contains(&a.id), "{e}");

    b.cmd(json!({"cmd": "delta", "key": "d", "delta": {"f": 1}})).await;
    let u = a.expect(|j| j["event"] == "update" && j["key"] == json!("d")).await;
    assert_eq!(u["value"], json!({"f": 1}));
    a.cmd(json!({"cmd": "delete", "key": "k"})).await;
    let d = b.expect(|j| j["event"] == "delete").await;
    assert_eq!(d["key"], json!("k"));

    b.cmd(json!({"cmd": "dump"})).await;
    let dump = b.expect(|j| j["event"] == "dump").await;
    let entries = dump["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|e| e["owner"].is_string() && e["timestamp"].is_u64()));

    // Dictionary commands without --sync are an error, not a crash.
    let mut m = Node::spawn(&[]).await;
    m.cmd(json!({"cmd": "set", "key": "k", "value": 1})).await;
    let e = m.expect(|j| j["event"] == "error").await;
    assert!(e["message"].as_str().unwrap().contains("--sync"));
    for n in [a, b, m] {
        n.quit().await;
    }
}

#[tokio::test]
async fn json_lines_tls() {
    let mut a = Node::spawn(&["--tls"]).await;
    let mut b = Node::spawn(&["--tls", "--connect", &a.addr]).await;
    // Both ends count the link before a broadcasts (b's peer_up alone does
    // not say a has checked b's proof yet).
    b.expect(|j| j["event"] == "peer_up").await;
    a.expect(|j| j["event"] == "peer_up").await;
    a.cmd(json!({"cmd": "broadcast", "packets": ["secret"]})).await;
    let m = b.expect(|j| j["event"] == "message").await;
    assert_eq!(m["packets"], json!(["secret"]));
    // A plaintext node is refused, with the reason.
    let mut p = Node::spawn(&[]).await;
    p.cmd(json!({"cmd": "connect", "addr": a.addr})).await;
    let e = p.expect(|j| j["event"] == "error" && j["cmd"] == "connect").await;
    assert!(e["message"].as_str().unwrap().contains("TLS"), "{e}");
    for n in [a, b, p] {
        n.quit().await;
    }
}
