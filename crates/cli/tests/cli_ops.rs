//! The `rs2p` binary as operators meet it: bad input, acknowledged
//! commands, peer events, signals, startup failures, flags, config files,
//! metrics. Every test runs the real binary on loopback.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value as Json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const BIN: &str = env!("CARGO_BIN_EXE_rs2p");

struct Node {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    backlog: Vec<Json>,
    ready: Json,
}

impl Node {
    async fn spawn(extra: &[&str]) -> Node {
        let mut child = Command::new(BIN)
            .args(["node", "--json", "--bind", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start rs2p node");
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut n = Node { child, stdin, lines, backlog: Vec::new(), ready: Json::Null };
        n.ready = n.expect(|j| j["event"] == "ready").await;
        n
    }

    fn id(&self) -> String {
        self.ready["id"].as_str().unwrap().to_string()
    }

    fn addr(&self) -> String {
        self.ready["addr"].as_str().unwrap().to_string()
    }

    async fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(bytes).await.unwrap();
        stdin.flush().await.unwrap();
    }

    async fn cmd(&mut self, j: Json) {
        self.send(format!("{j}\n").as_bytes()).await;
    }

    /// The next event matching `pred` (others are kept for later).
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
                .unwrap_or_else(|| panic!("node exited; lines: {:?}", self.backlog));
            let j: Json = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
            if pred(&j) {
                return j;
            }
            self.backlog.push(j);
        }
    }

    /// Every event carrying `req`, after a `status` query with a marker
    /// `req` has been answered (the node answers in order, so all answers
    /// to earlier synchronous commands are in by then).
    async fn answers_to(&mut self, req: &Json) -> Vec<Json> {
        self.cmd(json!({"cmd": "status", "req": "marker"})).await;
        self.expect(|j| j["req"] == "marker").await;
        let (mine, rest): (Vec<Json>, Vec<Json>) =
            std::mem::take(&mut self.backlog).into_iter().partition(|j| j.get("req") == Some(req));
        self.backlog = rest;
        mine
    }

    fn pid(&self) -> i32 {
        self.child.id().unwrap() as i32
    }

    /// Peak resident memory, in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    async fn quit(mut self) {
        self.cmd(json!({"cmd": "quit", "req": "bye"})).await;
        self.expect(|j| j["req"] == "bye" && j["event"] == "ok").await;
        let status = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.expect("exits").unwrap();
        assert!(status.success(), "{status}");
    }
}

fn signal(pid: i32, sig: &str) {
    let ok = std::process::Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap();
    assert!(ok.success());
}

#[tokio::test]
async fn bad_input_gets_an_error_and_the_node_carries_on() {
    let mut a = Node::spawn(&[]).await;
    // Not UTF-8, binary junk, a NUL.
    a.send(b"\xff\xfe\x00binary\n").await;
    let e = a.expect(|j| j["event"] == "error").await;
    assert_eq!(e["message"], "line discarded: not UTF-8 (invalid byte at offset 0)");
    // A Latin-1 line inside an otherwise valid command.
    a.send(b"{\"cmd\":\"broadcast\",\"packets\":[\"caf\xe9\"]}\n").await;
    let e = a.expect(|j| j["event"] == "error").await;
    assert!(e["message"].as_str().unwrap().starts_with("line discarded: not UTF-8"), "{e}");
    // A line over the limit, and one with no newline before more input.
    let long = vec![b'x'; 40 << 20];
    a.send(&long).await;
    a.send(b"\n").await;
    let e = a.expect(|j| j["event"] == "error").await;
    assert_eq!(e["message"], format!("line of {} bytes discarded: the limit is {} bytes", 40 << 20, 32 << 20));
    // Structurally wrong commands, each with its own reason.
    for (bad, why) in [
        (r#"{"cmd":42}"#, "\"cmd\" must be a string"),
        (r#"{"cmd":"connect","addr":5}"#, "\"addr\" must be a string (HOST:PORT)"),
        (r#"{"cmd":"broadcast"}"#, "\"packets\" (an array of values) is required"),
        (r#"{"cmd":"broadcast","packets":"x"}"#, "\"packets\" must be an array"),
        (r#"{"cmd":"broadcast","packets":[18446744073709551616]}"#, "integer 18446744073709551616 is out of range"),
        (r#"{"cmd":"whisper","packets":[]}"#, "\"to\" (a peer id or a unique prefix) is required"),
        (r#"{"cmd":"whisper","to":"","packets":[]}"#, "a peer id (or a unique prefix of one) is required"),
        (r#"{"cmd":"fly"}"#, "unknown command \"fly\" (one of: connect, broadcast,"),
    ] {
        a.send(format!("{bad}\n").as_bytes()).await;
        let e = a.expect(|j| j["event"] == "error").await;
        assert!(e["message"].as_str().unwrap().starts_with(why), "{bad}: {e}");
    }
    // Still alive and answering.
    a.cmd(json!({"cmd": "peers", "req": 1})).await;
    let p = a.expect(|j| j["req"] == 1).await;
    assert_eq!(p, json!({"event": "peers", "peers": [], "req": 1}));
    a.quit().await;
}

#[tokio::test]
async fn a_quarter_gigabyte_line_leaves_memory_flat() {
    let mut a = Node::spawn(&[]).await;
    let before = a.peak_rss_kib();
    let chunk = vec![b'z'; 1 << 20];
    for _ in 0..250 {
        a.send(&chunk).await;
    }
    a.send(b"\n").await;
    let e = a.expect(|j| j["event"] == "error").await;
    assert_eq!(e["message"], format!("line of {} bytes discarded: the limit is {} bytes", 250 << 20, 32 << 20));
    let after = a.peak_rss_kib();
    // The reader buffers at most the limit (32 MiB) before it starts
    // skipping, and skips in read-sized chunks: growth stays bounded by the
    // limit, far below the line.
    assert!(after < before + 40 * 1024, "peak RSS {before} KiB -> {after} KiB");
    a.quit().await;
}

#[tokio::test]
async fn every_command_with_req_gets_exactly_one_answer() {
    let mut a = Node::spawn(&[]).await;
    let mut b = Node::spawn(&["--connect", &a.addr()]).await;
    b.expect(|j| j["event"] == "peer_up").await;
    a.expect(|j| j["event"] == "peer_up").await;
    let (a_id, b_id) = (a.id(), b.id());
    let reqs =
        [json!(7), json!("seven"), json!({"n": [1, 2]}), json!(18446744073709551615u64), json!(null), json!(1.5)];
    for (i, req) in reqs.iter().enumerate() {
        let cmds = [
            json!({"cmd": "broadcast", "packets": [i], "req": req}),
            json!({"cmd": "whisper", "to": &b_id[..6], "packets": ["w"], "req": req}),
            json!({"cmd": "status", "req": req}),
            json!({"cmd": "peers", "req": req}),
            json!({"cmd": "whisper", "to": "zzzz", "packets": [], "req": req}),
        ];
        for c in &cmds {
            a.cmd(c.clone()).await;
        }
        let answers = a.answers_to(req).await;
        let kinds: Vec<&str> = answers.iter().map(|j| j["event"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["ok", "ok", "status", "peers", "error"], "req {req}: {answers:?}");
        // Echoed with its type.
        let text = |j: &Json| serde_json::to_string(j).unwrap();
        assert!(answers.iter().all(|j| text(&j["req"]) == text(req)), "{answers:?}");
        assert_eq!((answers[0]["cmd"].clone(), answers[0]["peers"].clone()), (json!("broadcast"), json!(1)));
        assert_eq!((answers[1]["to"].clone(), answers[1]["peers"].clone()), (json!(b_id), json!(1)));
        assert_eq!(answers[2]["id"], json!(a_id));
        assert_eq!(answers[4]["message"], "no connected peer with id starting \"zzzz\"");
    }
    // Without req, successes are silent: only b's messages show.
    a.cmd(json!({"cmd": "broadcast", "packets": ["quiet"]})).await;
    assert!(a.answers_to(&json!("none")).await.is_empty());
    assert!(a.backlog.iter().all(|j| j["event"] != "ok"), "{:?}", a.backlog);

    // A message carries its id; replying to its sender by prefix reaches it.
    let m = b.expect(|j| j["event"] == "message" && j["packets"] == json!(["quiet"])).await;
    assert_eq!(m["id"].as_str().unwrap().len(), 64, "{m}");
    assert_eq!(m["verified"], true, "signed by a: {m}");
    b.cmd(json!({"cmd": "reply", "to": &m["sender"].as_str().unwrap()[..5], "packets": ["re"], "req": "r"})).await;
    let ok = b.expect(|j| j["req"] == "r").await;
    assert_eq!(ok, json!({"event": "ok", "cmd": "reply", "to": a_id, "route": "direct", "peers": 1, "req": "r"}));
    let re = a.expect(|j| j["event"] == "message" && j["packets"] == json!(["re"])).await;
    assert_eq!((re["kind"].clone(), re["sender"].clone()), (json!("whisper"), json!(b_id)));
    assert_eq!(re["verified"], true, "on the link b proved: {re}");

    // Connect answers when the handshake is done.
    let mut c = Node::spawn(&[]).await;
    c.cmd(json!({"cmd": "connect", "addr": a.addr(), "req": "dial"})).await;
    let ok = c.expect(|j| j["req"] == "dial").await;
    assert_eq!((ok["event"].clone(), ok["id"].clone()), (json!("ok"), json!(a_id)));
    c.cmd(json!({"cmd": "connect", "addr": "127.0.0.1:1", "req": "nope"})).await;
    let e = c.expect(|j| j["req"] == "nope").await;
    assert_eq!(e["event"], "error");
    assert_eq!(e["message"], "connecting to 127.0.0.1:1 failed: refused: nothing listens there");
    // Reported once: by the answer, not again as an event.
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.answers_to(&json!("flush")).await;
    assert!(c.backlog.iter().all(|j| j["event"] != "connect_failed"), "{:?}", c.backlog);

    // Disconnect by prefix: the other side hears why.
    a.cmd(json!({"cmd": "disconnect", "id": &b_id[..8], "req": "d"})).await;
    let ok = a.expect(|j| j["req"] == "d").await;
    assert_eq!(ok, json!({"event": "ok", "cmd": "disconnect", "id": b_id, "req": "d"}));
    let down = b.expect(|j| j["event"] == "peer_down" && j["id"] == json!(a_id)).await;
    assert_eq!(down["reason"], "peer disconnected us");
    for n in [a, b, c] {
        n.quit().await;
    }
}

#[tokio::test]
async fn peers_come_up_once_and_leave_with_a_reason() {
    let mut a = Node::spawn(&[]).await;
    let mut b = Node::spawn(&[]).await;
    // Both dial at once: the conflict rule keeps one link.
    a.cmd(json!({"cmd": "connect", "addr": b.addr()})).await;
    b.cmd(json!({"cmd": "connect", "addr": a.addr()})).await;
    a.expect(|j| j["event"] == "peer_up").await;
    b.expect(|j| j["event"] == "peer_up").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in [&mut a, &mut b] {
        n.answers_to(&json!("flush")).await;
        // Whichever link the conflict rule kept, the peer came up once and
        // never went down (a replaced link is no news).
        let seen: Vec<&str> = n
            .backlog
            .iter()
            .filter_map(|j| j["event"].as_str().filter(|e| *e == "peer_up" || *e == "peer_down"))
            .collect();
        assert!(seen.is_empty(), "after the first peer_up: {:?}", n.backlog);
        n.backlog.clear();
    }
    // SIGTERM: a graceful exit, and the peer is told.
    let b_id = b.id();
    signal(b.pid(), "TERM");
    let bye = b.expect(|j| j["event"] == "shutdown").await;
    assert_eq!(bye["reason"], "SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(5), b.child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    let down = a.expect(|j| j["event"] == "peer_down").await;
    assert_eq!((down["id"].clone(), down["reason"].clone()), (json!(b_id), json!("peer quit")));
    // SIGINT too.
    signal(a.pid(), "INT");
    let bye = a.expect(|j| j["event"] == "shutdown").await;
    assert_eq!(bye["reason"], "SIGINT");
    assert!(tokio::time::timeout(Duration::from_secs(5), a.child.wait()).await.unwrap().unwrap().success());
}

#[tokio::test]
async fn dialing_another_kind_of_service_says_so() {
    // Something that answers like a web server.
    let web = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web_addr = web.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = web.accept().await {
            let _ = s.write_all(b"HTTP/1.0 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    let mut a = Node::spawn(&[]).await;
    a.cmd(json!({"cmd": "connect", "addr": web_addr, "req": 1})).await;
    let e = a.expect(|j| j["req"] == 1).await;
    let message = e["message"].as_str().unwrap();
    assert!(message.starts_with(&format!("connecting to {web_addr} failed: not a py2p/rs2p node (")), "{e}");
    a.quit().await;
}

#[tokio::test]
async fn ready_and_status_show_the_real_listening_address() {
    let mut a = Node::spawn(&["--out-addr", "127.0.0.1:47999"]).await;
    assert_eq!(a.ready["addr"], "127.0.0.1:47999");
    let listen = a.ready["listen"].as_str().unwrap().to_string();
    assert!(listen.starts_with("127.0.0.1:") && listen != "127.0.0.1:47999", "{}", a.ready);
    assert_eq!(a.ready["subnet"], "mesh");
    a.cmd(json!({"cmd": "status", "req": 1})).await;
    let st = a.expect(|j| j["req"] == 1).await;
    assert_eq!((st["listen"].clone(), st["addr"].clone()), (json!(listen), json!("127.0.0.1:47999")));
    a.quit().await;
}

#[tokio::test]
async fn startup_failures_are_fatal_events_in_json_mode() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN).args(["node", "--json", "--bind", &addr]).stdin(Stdio::null()).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<Json> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert_eq!(lines[0]["event"], "fatal");
    // The cause once, not once per layer that wraps it.
    assert_eq!(lines[0]["message"].as_str().unwrap().matches("Address already in use").count(), 1, "{stdout}");
    // No backtrace for a user error, even when the environment asks.
    let out = Command::new(BIN).args(["demo", "--nodes", "1"]).env("RUST_BACKTRACE", "1").output().await.unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success() && !stderr.contains("backtrace"), "{stderr}");
}

#[tokio::test]
async fn version_flags_and_config_file() {
    let out = Command::new(BIN).arg("--version").output().await.unwrap();
    let v = String::from_utf8(out.stdout).unwrap();
    assert!(v.starts_with("rs2p 0.1.0 (py2p 0.7.878 wire protocol, commit "), "{v}");
    // A config file sets flags; the command line wins.
    let dir = std::env::temp_dir().join(format!("rs2p-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("node.toml");
    std::fs::write(
        &file,
        "json = true\nsubnet = \"from-file\"\nbind = \"127.0.0.1:0\"\n[node]\nout_addr = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["node", "--config", file.to_str().unwrap(), "--out-addr", "127.0.0.1:2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready: Json = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!((ready["subnet"].clone(), ready["addr"].clone()), (json!("from-file"), json!("127.0.0.1:2")));
    drop(child.stdin.take());
    assert!(child.wait().await.unwrap().success());
    std::fs::write(&file, "colour = \"blue\"\n").unwrap();
    let out = Command::new(BIN).args(["node", "--config", file.to_str().unwrap()]).output().await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("unknown setting \"colour\" for `rs2p node`"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn logs_say_why_links_come_and_go() {
    let mut a = Node::spawn(&[]).await;
    let mut b = Command::new(BIN)
        .args(["node", "--json", "--log-level", "info", "--connect", &a.addr()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    a.expect(|j| j["event"] == "peer_up").await;
    let mut stderr = BufReader::new(b.stderr.take().unwrap()).lines();
    let mut log = String::new();
    a.quit().await;
    // b notices a leaving (bounded wait), then quits at the end of its input.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !log.contains("link down") {
        match tokio::time::timeout_at(deadline, stderr.next_line()).await {
            Ok(Ok(Some(line))) => log += &(line + "\n"),
            _ => panic!("no link down in:\n{log}"),
        }
    }
    drop(b.stdin.take());
    while let Ok(Ok(Some(line))) = tokio::time::timeout_at(deadline, stderr.next_line()).await {
        log += &(line + "\n");
    }
    assert!(tokio::time::timeout(Duration::from_secs(5), b.wait()).await.unwrap().unwrap().success());
    for needle in ["node started", "link up", "link down", "reason=peer quit", "shutting down"] {
        assert!(log.contains(needle), "{needle:?} missing in:\n{log}");
    }
    assert!(!log.contains('\u{1b}'), "no colours when stderr is not a terminal:\n{log}");
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_text() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let metrics = format!("127.0.0.1:{port}");
    let mut a = Node::spawn(&["--sync", "--metrics", &metrics]).await;
    let mut b = Node::spawn(&["--sync", "--connect", &a.addr()]).await;
    a.expect(|j| j["event"] == "peer_up").await;
    b.cmd(json!({"cmd": "set", "key": "k", "value": 1, "req": 1})).await;
    b.expect(|j| j["req"] == 1).await;
    a.expect(|j| j["event"] == "update").await;
    let scrape = |path: &'static str| {
        let metrics = metrics.clone();
        async move {
            let mut s = tokio::net::TcpStream::connect(&metrics).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).await.unwrap();
            text
        }
    };
    let text = scrape("/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("content-type: application/openmetrics-text"), "{text}");
    for line in ["rs2p_peers 1", "rs2p_sync_keys 1", "# TYPE rs2p_frames_in counter", "rs2p_queued_messages 0"] {
        assert!(text.lines().any(|l| l == line), "{line} missing in:\n{text}");
    }
    let frames_in: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("rs2p_frames_in_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(frames_in > 0);
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    assert!(scrape("/other").await.starts_with("HTTP/1.1 404"));
    a.quit().await;
    b.quit().await;
}

/// `--max-outgoing 0` keeps the links asked for and no others; by default
/// a node also dials the peers it learns of.
#[tokio::test]
async fn max_outgoing_zero_keeps_only_the_links_asked_for() {
    async fn peers(n: &mut Node) -> u64 {
        n.cmd(json!({"cmd": "status", "req": "peers"})).await;
        n.expect(|j| j["req"] == "peers").await["peers"].as_u64().unwrap()
    }
    let mut learned_after = Duration::ZERO;
    for (flags, want) in [(&[][..], 2), (&["--max-outgoing", "0"][..], 1)] {
        let mut a = Node::spawn(flags).await;
        let mut b = Node::spawn(flags).await;
        let mut c = Node::spawn(flags).await;
        b.cmd(json!({"cmd": "connect", "addr": c.addr()})).await;
        b.expect(|j| j["event"] == "peer_up").await;
        c.expect(|j| j["event"] == "peer_up").await;
        let start = tokio::time::Instant::now();
        a.cmd(json!({"cmd": "connect", "addr": b.addr()})).await;
        a.expect(|j| j["event"] == "peer_up").await;
        if want == 2 {
            // a learns of c from b and dials it.
            while peers(&mut a).await < 2 {
                assert!(start.elapsed() < Duration::from_secs(10), "a never linked to c");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            learned_after = start.elapsed();
        } else {
            // Twice the time the default took, and more: still a chain.
            tokio::time::sleep(learned_after * 2 + Duration::from_millis(500)).await;
            assert_eq!((peers(&mut a).await, peers(&mut c).await), (1, 1));
        }
        for n in [a, b, c] {
            n.quit().await;
        }
    }
}

/// `--key FILE`: the key is made once (owner-only), the node keeps its id
/// across restarts, and the id is what any implementation derives from the
/// public key: py2p's `base58.b58encode_int` of the SHA-384 of the key,
/// computed here by Python (the pinned py2p virtualenv's `base58`).
#[tokio::test]
async fn a_key_file_keeps_the_id_and_the_id_is_checkable() {
    let dir = std::env::temp_dir().join(format!("rs2p-cli-key-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("node.key");
    let key_arg = key.to_str().unwrap();
    let a = Node::spawn(&["--key", key_arg]).await;
    let (id, public_key) = (a.id(), a.ready["public_key"].as_str().unwrap().to_string());
    a.quit().await;
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let again = Node::spawn(&["--key", key_arg, "--sync"]).await;
    assert_eq!((again.id(), again.ready["public_key"].as_str().unwrap()), (id.clone(), public_key.as_str()));
    again.quit().await;
    let fresh = Node::spawn(&[]).await;
    assert_ne!(fresh.id(), id);
    fresh.quit().await;

    let python = std::env::var_os("RS2P_PY2P_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv-py2p/bin/python").into());
    assert!(python.exists(), "needs the pinned py2p virtualenv at {}: run ./scripts/setup-py2p.sh", python.display());
    let script = "import base58, hashlib, sys\n\
        pk = bytes.fromhex(sys.argv[1])\n\
        print(base58.b58encode_int(int.from_bytes(hashlib.sha384(pk).digest(), 'big')).decode())";
    let out = std::process::Command::new(python).args(["-c", script, &public_key]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), id);

    // A file that is not a key: a clear fatal error, and the file is kept.
    std::fs::write(&key, "garbage").unwrap();
    let out = std::process::Command::new(BIN).args(["node", "--json", "--key", key_arg]).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"fatal\"") && text.contains("not an Ed25519 private key"), "{text}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "garbage");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--data-dir`: a write acknowledged (`"req"` answered `ok`) survives a
/// `kill -9` of the node the moment after, under `--fsync always` and
/// `batch`; the node comes back with its id and every entry.
#[tokio::test]
async fn an_acknowledged_write_survives_kill_9() {
    for policy in ["always", "batch"] {
        let dir = std::env::temp_dir().join(format!("rs2p-cli-durable-{}-{policy}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let dir_arg = dir.to_str().unwrap().to_string();
        let flags = ["--sync", "--data-dir", &dir_arg, "--fsync", policy];
        let mut a = Node::spawn(&flags).await;
        let id = a.id();
        let mut lines = String::new();
        for i in 0..500 {
            lines += &format!("{}\n", json!({"cmd": "set", "key": format!("k{i}"), "value": i, "req": i}));
        }
        lines += &format!("{}\n", json!({"cmd": "delete", "key": "k3", "req": "del"}));
        a.send(lines.as_bytes()).await;
        // Answers come in order: the last one means every one before it.
        a.expect(|j| j["req"] == "del" && j["event"] == "ok").await;
        signal(a.pid(), "KILL");
        a.child.wait().await.unwrap();

        let mut b = Node::spawn(&flags).await;
        assert_eq!(b.id(), id, "{policy}: same id after the restart");
        b.cmd(json!({"cmd": "dump", "req": "d"})).await;
        let dump = b.expect(|j| j["req"] == "d").await;
        let entries = dump["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 499, "{policy}: every acknowledged set, and the delete");
        assert!(entries.iter().all(|e| e["key"] != "k3"), "{policy}: the delete survived too");
        assert!(entries.iter().any(|e| e["key"] == "k499" && e["value"] == 499), "{policy}: the last set");
        b.quit().await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A damaged store is never served: the node refuses to start with a
/// fatal event naming it, unless told `--on-corrupt resync`.
#[tokio::test]
async fn a_damaged_store_is_refused_or_set_aside() {
    let dir = std::env::temp_dir().join(format!("rs2p-cli-corrupt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dictionary.redb"), vec![0x5a; 8192]).unwrap();
    let dir_arg = dir.to_str().unwrap();
    let out =
        std::process::Command::new(BIN).args(["node", "--json", "--sync", "--data-dir", dir_arg]).output().unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"fatal\"") && text.contains("dictionary.redb") && text.contains("--on-corrupt resync"),
        "{text}"
    );
    let n = Node::spawn(&["--sync", "--data-dir", dir_arg, "--on-corrupt", "resync"]).await;
    n.quit().await;
    let aside = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with("dictionary.redb.corrupt-"));
    assert!(aside, "the damaged store was kept aside");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--connect HOST:PORT@ID` links only to ID, proven; `--allow-file` makes a
/// private network that keeps other nodes out; both say why.
#[tokio::test]
async fn require_signed_refuses_peers_that_do_not_sign() {
    let mut strict = Node::spawn(&["--require-signed"]).await;
    // A signing node links, and its broadcasts arrive verified.
    let mut signer = Node::spawn(&["--connect", &strict.addr()]).await;
    signer.expect(|j| j["event"] == "peer_up").await;
    strict.expect(|j| j["event"] == "peer_up").await;
    signer.cmd(json!({"cmd": "broadcast", "packets": ["signed"]})).await;
    let m = strict.expect(|j| j["event"] == "message" && j["packets"] == json!(["signed"])).await;
    assert_eq!(m["verified"], true, "{m}");
    // A node that does not sign is refused, with the reason on its side
    // of the log and counted on the strict side.
    let mut unsigned = Node::spawn(&["--no-sign", "--connect", &strict.addr()]).await;
    unsigned.expect(|j| j["event"] == "error" || j["event"] == "connect_failed").await;
    let refusal = strict.expect(|j| j["event"] == "connect_failed").await;
    assert!(refusal.to_string().contains("does not sign its messages"), "{refusal}");
    strict.cmd(json!({"cmd": "status", "req": "s"})).await;
    let st = strict.expect(|j| j["req"] == "s").await;
    assert_eq!((st["refused_ids"].clone(), st["peers"].clone()), (json!(1), json!(1)), "{st}");
    // The flags exclude each other.
    let out = std::process::Command::new(BIN).args(["node", "--require-signed", "--no-sign"]).output().unwrap();
    assert!(!out.status.success());
    for n in [strict, signer, unsigned] {
        n.quit().await;
    }
}

#[tokio::test]
async fn proven_connects_and_a_private_network() {
    let a = Node::spawn(&[]).await;
    let b = Node::spawn(&[]).await;
    // The right id: linked.
    let ok = Node::spawn(&["--connect", &format!("{}@{}", a.addr(), a.id())]).await;
    let mut ok = ok;
    ok.expect(|j| j["event"] == "peer_up" && j["id"] == a.id()).await;
    // Another node where a was expected: refused, saying so.
    let mut wrong = Node::spawn(&["--connect", &format!("{}@{}", b.addr(), a.id())]).await;
    let e = wrong.expect(|j| j["event"] == "error").await;
    let msg = e["message"].as_str().unwrap_or_default();
    assert!(msg.contains(&format!("expected {}, but the peer is {}", a.id(), b.id())), "{e}");
    // The same through the JSON command, with a req.
    wrong.cmd(json!({"cmd": "connect", "addr": b.addr(), "id": a.id(), "req": 7})).await;
    let e = wrong.expect(|j| j["req"] == 7).await;
    assert_eq!(e["event"], "error", "{e}");
    // Not an id: a usage error at once.
    let out = std::process::Command::new(BIN)
        .args(["node", "--json", "--connect", "127.0.0.1:1@not-an-id!"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a base58 character"));

    // A private network of a and c: b is kept out, c links.
    let dir = std::env::temp_dir().join(format!("rs2p-cli-allow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key_c = dir.join("c.key");
    let c_id = {
        let c = Node::spawn(&["--key", key_c.to_str().unwrap()]).await;
        let id = c.id();
        c.quit().await;
        id
    };
    let list = dir.join("allow");
    std::fs::write(&list, format!("# the members\n{c_id}\n\n{}\n", a.id())).unwrap();
    let mut private = Node::spawn(&["--allow-file", list.to_str().unwrap()]).await;
    let mut c = Node::spawn(&["--key", key_c.to_str().unwrap(), "--connect", &private.addr()]).await;
    c.expect(|j| j["event"] == "peer_up").await;
    let mut outsider = Node::spawn(&["--connect", &private.addr()]).await;
    outsider.expect(|j| j["event"] == "error" || j["event"] == "connect_failed").await;
    private.cmd(json!({"cmd": "status", "req": "s"})).await;
    let st = private.expect(|j| j["req"] == "s").await;
    assert_eq!(st["refused_ids"], 1, "{st}");
    assert_eq!(st["peers"], 1, "{st}");
    // A list with a line that is no id: a fatal error naming the line.
    std::fs::write(&list, format!("{c_id}\nnot an id\n")).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["node", "--json", "--allow-file", list.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(":2: not a node id"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for n in [ok, wrong, private, c, outsider, b, a] {
        n.quit().await;
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
