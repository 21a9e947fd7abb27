"""The Python benchmark: a 3-node chain, one Python process per node, for
the rs2p package and for py2p side by side.

    python bench/python_chain.py [--messages 20000] [--size 100] [--runs 3]

The two ends advertise addresses nobody listens on, so they can never link
and every message crosses the middle node (checked before and after). The
sender sends N broadcasts of SIZE bytes with ``send()``; the far node takes
them with ``recv()``. The rate is messages delivered / (first send -> the
later of the last arrival and the end of sending). py2p drops its links
under bursts, so its sender is paced lightly. Also measured: the resident
memory of one idle node process, and of the bare interpreter.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def load(impl: str):
    if impl == "rs2p":
        from rs2p import mesh
    else:
        from py2p import mesh
    return mesh


#: Marks the driver's lines: py2p prints its own messages to stdout too.
MARK = "@@ "


def say(obj) -> None:
    print(MARK + json.dumps(obj), flush=True)


def node_main(args) -> None:
    """One node; obeys lines on stdin, answers with JSON lines."""
    mesh = load(args.impl)
    out = ("127.0.0.1", args.advertise) if args.advertise else None
    sock = mesh.MeshSocket("127.0.0.1", args.port, out_addr=out)
    say({"ready": True, "id": sock.id.decode()})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "connect":
            sock.connect("127.0.0.1", cmd["port"])
            say({"ok": True})
        elif op == "peers":
            say({"peers": sorted(p.decode() for p in sock.routing_table)})
        elif op == "send":
            # Distinct payloads: equal ones sent within a second are one
            # message to py2p's protocol (the id is the payload's hash).
            size = cmd["size"]
            payloads = [("%0{}d".format(size) % i).encode() for i in range(cmd["n"])]
            pace_every, pace_s = cmd.get("pace_every", 0), cmd.get("pace_s", 0.0)
            start = time.monotonic()
            for i, payload in enumerate(payloads):
                sock.send(payload)
                if pace_every and i % pace_every == pace_every - 1:
                    time.sleep(pace_s)
            if hasattr(sock, "flush"):
                sock.flush()  # rs2p pipelines sends: all handed over
            say({"start": start, "end": time.monotonic()})
        elif op == "recv":
            n, got, last = cmd["n"], 0, None
            idle_deadline = time.monotonic() + cmd["idle_s"]
            while got < n and time.monotonic() < idle_deadline:
                m = sock.recv()
                if m is None:
                    time.sleep(0.0002)
                    continue
                got += 1
                last = time.monotonic()
                idle_deadline = last + cmd["idle_s"]
            say({"got": got, "last": last})
        elif op == "status":
            st = sock.status
            say({"status": st if isinstance(st, str) else [e[-400:] for e in st]})
        elif op == "rss":
            say({"rss_kib": rss_kib()})
        elif op == "quit":
            break
    try:
        sock.close()
    except Exception:
        pass


class Node:
    def __init__(self, impl: str, port: int, advertise: int = 0):
        cmd = [sys.executable, __file__, "node", "--impl", impl, "--port", str(port)]
        if advertise:
            cmd += ["--advertise", str(advertise)]
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = port
        self.id = self.read()["id"]

    def read(self):
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError("node exited")
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
            if os.environ.get("CHAIN_DEBUG"):
                print("  node says: " + line.rstrip(), file=sys.stderr)

    def ask(self, **cmd):
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        return self.read()

    def quit(self):
        try:
            self.p.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.p.stdin.flush()
            self.p.wait(timeout=10)
        except Exception:
            self.p.kill()
            self.p.wait()


#: py2p's sender sleeps this long after every this many messages: its links
#: break under bursts (a read that ends on a length prefix).
PY2P_PACE = (int(os.environ.get("PY2P_PACE_EVERY", "1")), float(os.environ.get("PY2P_PACE_S", "0.003")))


def chain_run(impl: str, n: int, size: int):
    pace = {"pace_every": 0, "pace_s": 0.0} if impl == "rs2p" else {"pace_every": PY2P_PACE[0], "pace_s": PY2P_PACE[1]}
    middle = Node(impl, free_port())
    sender = Node(impl, free_port(), advertise=free_port())
    receiver = Node(impl, free_port(), advertise=free_port())
    try:
        sender.ask(op="connect", port=middle.port)
        receiver.ask(op="connect", port=middle.port)
        time.sleep(1.0)  # peer exchange: the ends try (and fail) to link
        for end in (sender, receiver):
            peers = end.ask(op="peers")["peers"]
            if peers != [middle.id]:
                raise RuntimeError("{} end linked to {} (must only see the middle)".format(impl, peers))
        receiver.p.stdin.write(json.dumps({"op": "recv", "n": n, "idle_s": 10}) + "\n")
        receiver.p.stdin.flush()
        sent = sender.ask(op="send", n=n, size=size, **pace)
        got = receiver.read()
        for end in (sender, receiver):
            peers = end.ask(op="peers")["peers"]
            other = receiver.id if end is sender else sender.id
            if other in peers:
                raise RuntimeError("the ends linked during the run: not a chain")
        if os.environ.get("CHAIN_DEBUG"):
            for name, node in (("sender", sender), ("middle", middle), ("receiver", receiver)):
                print(name, node.ask(op="peers"), node.ask(op="status"), file=sys.stderr)
        end_t = max(sent["end"], got["last"] or sent["end"])
        elapsed = end_t - sent["start"]
        return {"delivered": got["got"], "lost": n - got["got"], "rate": got["got"] / elapsed, "secs": elapsed}
    finally:
        for node in (middle, sender, receiver):
            node.quit()


def idle_memory(impl: str):
    node = Node(impl, free_port())
    try:
        time.sleep(2.0)
        node_kib = node.ask(op="rss")["rss_kib"]
    finally:
        node.quit()
    bare = subprocess.run(
        [sys.executable, "-c", "import json,sys;sys.path.insert(0,'');print(open('/proc/self/status').read())"],
        capture_output=True,
        text=True,
        check=True,
    )
    bare_kib = next(int(l.split()[1]) for l in bare.stdout.splitlines() if l.startswith("VmRSS:"))
    return {"rss_kib": node_kib, "bare_interpreter_kib": bare_kib}


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what")
    n = sub.add_parser("node")
    n.add_argument("--impl", choices=["rs2p", "py2p"], required=True)
    n.add_argument("--port", type=int, required=True)
    n.add_argument("--advertise", type=int, default=0)
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--impls", default="rs2p,py2p")
    args = ap.parse_args()
    if args.what == "node":
        node_main(args)
        return
    results = {}
    for impl in args.impls.split(","):
        runs = []
        for _ in range(args.runs):
            r = chain_run(impl, args.messages, args.size)
            print("  {} run: {}".format(impl, json.dumps(r)), file=sys.stderr, flush=True)
            runs.append(r)
        results[impl] = {"runs": runs, "median_rate": statistics.median(r["rate"] for r in runs),
                         "lost": [r["lost"] for r in runs], "idle": idle_memory(impl)}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
