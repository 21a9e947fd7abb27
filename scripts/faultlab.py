#!/usr/bin/env python3
"""The fault lab: real `rs2p node --json --sync --data-dir` processes, each in
its own network namespace on a shared Linux bridge, under kills, freezes,
silent partitions and clock skew, while a workload writes and deletes; then a
checker reads the history and every node's dictionary.

    scripts/faultlab.py run [--nodes 5] [--seconds 40] [--seed 1]
    scripts/faultlab.py campaign [--nodes 20] [--schedules 200] [--seconds 60] [--out FILE]
    scripts/faultlab.py summary FILE...   totals of campaign reports
    ... [--py2p K [--py2p-every M]]   K of the nodes are py2p 0.7.878 peers

With --leasing the nodes run py2p's leases (the lab otherwise runs
--no-leasing): acknowledged writes a lease withdraws at the heal are
counted, and the replicas must agree.

py2p nodes (memory only; scripts/setup-py2p.sh installs the pinned peer)
take writes and faults like the others; the checker requires the rs2p
replicas to agree and the rs2p nodes to be connected, and reports when
every py2p node was linked again and how many of py2p's own acknowledged
writes are missing (py2p repairs nothing, so those are counted, not
violations).

Needs root (network namespaces), `ip` (iproute2) and `faketime`
(`scripts/setup-faultlab.sh` installs them). Every address it uses,
10.213.0.0/24, lives only inside the namespaces it creates; they are removed
on exit, on Ctrl-C and on failure. Nodes bind 10.213.0.(10+i):4000.

Faults, drawn from a seeded schedule:
- `kill`: SIGKILL a node, restart it 1-3 s later from its data directory;
- `freeze`: SIGSTOP a node for 5-10 s, then SIGCONT;
- `partition`: take down the bridge ports of a minority (or of one node, or
  of a majority) so that packets vanish with no FIN or RST, 3-10 s;
- `flap`: one node's port down and up several times, 0.5-2 s each;
- clock skew: nodes started with libfaketime preloaded and an offset (the
  schedule picks which; `--skews 30,300,3600` for 30 s, 5 min or 1 h,
  either way).

The checker (exit status 1 on any violation):
- no node process died unless the lab killed it;
- the rs2p replicas are identical after the heal;
- no acknowledged write is lost: the final entry of its key is that write,
  or a write whose version is not older (the version is bounded below by
  the node's clock when the write was issued: the hybrid clock only moves
  forward);
- no key comes back after an acknowledged delete (the same rule: a value
  older than the delete would be a resurrection);
- the mesh is connected again, and the time it took is reported.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# RS2P_FAULTLAB_BIN: a copy of the binary, so that a long campaign is not
# changed under its feet by a rebuild.
BIN = os.environ.get("RS2P_FAULTLAB_BIN") or os.path.join(ROOT, "target", "release", "rs2p")
PORT = 4000
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
# py2p nodes (--py2p K): the pinned reference peer (scripts/setup-py2p.sh)
# driven by the interop tests' JSON-lines wrapper.
PY2P_PYTHON = os.path.join(ROOT, ".venv-py2p", "bin", "python")
PY2P_PEER = os.path.join(ROOT, "crates", "rs2p", "tests", "interop", "py2p_peer.py")


def sh(*args, check=True):
    """Runs a command (a list of strings), quietly."""
    r = subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(args), r.stderr.strip()))
    return r


class Net:
    """A bridge namespace and one namespace per node, joined by veth pairs."""

    def __init__(self, n, tag):
        self.n = n
        self.br = "fl%s-br" % tag
        self.ns = ["fl%s-n%d" % (tag, i) for i in range(n)]
        self.created = []

    def addr(self, i):
        return "10.213.0.%d" % (10 + i)

    def up(self):
        sh("ip", "netns", "add", self.br)
        self.created.append(self.br)
        sh("ip", "-n", self.br, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.br, "link", "set", "br0", "up")
        for i, ns in enumerate(self.ns):
            sh("ip", "netns", "add", ns)
            self.created.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "p%d" % i, "netns", self.br)
            sh("ip", "-n", ns, "addr", "add", self.addr(i) + "/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", self.br, "link", "set", "p%d" % i, "master", "br0")
            sh("ip", "-n", self.br, "link", "set", "p%d" % i, "up")

    def port(self, i, up):
        """A node's bridge port up or down: down, its packets vanish."""
        sh("ip", "-n", self.br, "link", "set", "p%d" % i, "up" if up else "down")

    def down(self):
        for ns in reversed(self.created):
            sh("ip", "netns", "del", ns, check=False)
        self.created = []


class Node:
    """One `rs2p node --json --sync` process in its namespace, or (py2p=True)
    one py2p 0.7.878 SyncSocket, memory only, behind the same JSON lines."""

    def __init__(self, lab, i, skew, py2p=False):
        self.lab, self.i, self.skew, self.py2p = lab, i, skew, py2p
        self.dir = os.path.join(lab.tmp, "node%d" % i)
        self.proc = None
        self.lock = threading.Lock()
        self.waiting = {}  # req -> op
        self.answers = {}  # req -> event
        self.killed_by_us = False
        self.crashed = None
        self.id = None
        self.stopped = False

    def start(self):
        net = self.lab.net
        # libfaketime preloaded into the node itself, not the `faketime`
        # wrapper: the wrapper forks, so signals meant for the node (kill,
        # stop) would reach only the wrapper.
        env = dict(os.environ)
        if self.skew:
            env["LD_PRELOAD"] = FAKETIME_LIB
            env["FAKETIME"] = "%+ds" % self.skew
        if self.py2p:
            # py2p keeps nothing on disk: restarted, it starts empty.
            cmd = ["ip", "netns", "exec", net.ns[self.i], PY2P_PYTHON, PY2P_PEER, "--sync",
                   "--bind", "%s:%d" % (net.addr(self.i), PORT)]
        else:
            cmd = ["ip", "netns", "exec", net.ns[self.i], BIN, "node", "--json", "--sync", "-q",
                   "--data-dir", self.dir, "--bind", "%s:%d" % (net.addr(self.i), PORT)]
        if not self.lab.args.leasing:
            cmd.append("--no-leasing")
        for j in self.lab.seeds_for(self.i):
            cmd += ["--connect", "%s:%d" % (net.addr(j), PORT)]
        self.killed_by_us = False
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                     stderr=open(os.path.join(self.lab.tmp, "node%d.log" % self.i), "a"))
        threading.Thread(target=self.read, args=(self.proc,), daemon=True).start()

    def read(self, proc):
        for line in proc.stdout:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") == "ready":
                self.id = e["id"]
            req = e.get("req")
            if req is not None:
                with self.lock:
                    op = self.waiting.pop(req, None)
                    self.answers[req] = e
                if op is not None:
                    op["answer"] = e.get("event")
                    op["acked"] = time.time()
        code = proc.wait()
        if not self.killed_by_us and not self.lab.stopping:
            self.crashed = code

    def send(self, obj):
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError, ValueError):
            return False

    def ask(self, cmd, timeout=10):
        """A query with a req; its answer, or None."""
        req = "q%d" % random.getrandbits(48)
        with self.lock:
            self.answers.pop(req, None)
        if not self.send(dict(cmd, req=req)):
            return None
        end = time.time() + timeout
        while time.time() < end:
            with self.lock:
                if req in self.answers:
                    return self.answers.pop(req)
            time.sleep(0.02)
        return None

    def kill(self):
        self.killed_by_us = True
        self.proc.kill()
        self.proc.wait()
        self.stopped = False


class Lab:
    def __init__(self, args, seed):
        self.args = args
        # Separate streams: the fault schedule must not depend on how many
        # writes the workload thread made meanwhile.
        self.rng = random.Random(seed)
        self.wrng = random.Random(seed * 7919 + 1)
        self.seed = seed
        self.tag = "%d%d" % (os.getpid() % 1000, seed % 100)
        self.tmp = tempfile.mkdtemp(prefix="rs2p-faultlab-")
        self.net = Net(args.nodes, self.tag)
        self.stopping = False
        self.history = []
        self.faults = []
        self.nodes = []

    def seeds_for(self, i):
        # Each node dials two earlier ones (node 0 dials nobody at first).
        return sorted({j for j in (i - 1, (i - 1) // 2) if 0 <= j < i})

    def log(self, msg):
        print("  [%5.1fs] %s" % (time.time() - self.t0, msg), flush=True)

    def run(self):
        self.t0 = time.time()
        try:
            self.net.up()
            skews = [0] * self.args.nodes
            for i in range(1, self.args.nodes):
                if self.rng.random() < self.args.skew_share:
                    skews[i] = self.rng.choice(self.args.skews) * self.rng.choice([1, -1])
            # Drawn only when asked for, so that a seed without py2p nodes
            # replays the schedule it had before py2p nodes existed.
            py2p = set()
            if self.args.py2p and self.seed % self.args.py2p_every == 0:
                py2p = set(self.rng.sample(range(1, self.args.nodes), min(self.args.py2p, self.args.nodes - 1)))
            self.nodes = [Node(self, i, skews[i], i in py2p) for i in range(self.args.nodes)]
            for n in self.nodes:
                n.start()
                time.sleep(0.2)
            self.log("%d nodes up (skews: %s; py2p: %s)"
                     % (len(self.nodes), [n.skew for n in self.nodes], sorted(py2p)))
            time.sleep(2)
            writer = threading.Thread(target=self.workload, daemon=True)
            self.writing = True
            writer.start()
            self.faults_for(self.args.seconds)
            self.writing = False
            writer.join()
            return self.heal_and_check()
        finally:
            self.stopping = True
            for n in self.nodes:
                if n.proc and n.proc.poll() is None:
                    if n.stopped:
                        n.proc.send_signal(signal.SIGCONT)
                    n.proc.kill()
                    n.proc.wait()
            self.net.down()
            if not self.args.keep:
                shutil.rmtree(self.tmp, ignore_errors=True)

    # ----- the workload -------------------------------------------------

    def workload(self):
        keys = ["k%d" % k for k in range(self.args.keys)]
        op_id = 0
        while self.writing:
            n = self.wrng.choice(self.nodes)
            key = self.wrng.choice(keys)
            op_id += 1
            op = {"op": op_id, "node": n.i, "key": key, "issued": time.time(), "answer": None, "skew": n.skew}
            if self.wrng.random() < 0.2:
                op["kind"] = "delete"
                cmd = {"cmd": "delete", "key": key, "req": op_id}
            else:
                op["kind"] = "set"
                op["value"] = "op%d" % op_id
                cmd = {"cmd": "set", "key": key, "value": op["value"], "req": op_id}
            with n.lock:
                n.waiting[op_id] = op
            self.history.append(op)
            n.send(cmd)
            time.sleep(1.0 / self.args.rate)

    # ----- faults -------------------------------------------------------

    def faults_for(self, seconds):
        end = time.time() + seconds
        while time.time() < end:
            time.sleep(self.rng.uniform(1.5, 4))
            kind = self.rng.choice(self.args.faults)
            getattr(self, "fault_" + kind)()

    def fault_kill(self):
        k = self.rng.choice([1, 1, 1, 2]) if self.args.nodes > 4 else 1
        victims = self.rng.sample(self.nodes, k)
        for v in victims:
            if v.stopped:
                v.proc.send_signal(signal.SIGCONT)
            v.kill()
        self.faults.append(("kill", [v.i for v in victims]))
        self.log("kill -9 %s" % [v.i for v in victims])
        time.sleep(self.rng.uniform(1, 3))
        for v in victims:
            v.start()
        self.log("restarted %s" % [v.i for v in victims])

    def fault_freeze(self):
        v = self.rng.choice(self.nodes)
        if v.stopped or v.proc.poll() is not None:
            return
        v.proc.send_signal(signal.SIGSTOP)
        v.stopped = True
        secs = self.rng.uniform(*self.args.freeze)
        self.faults.append(("freeze", v.i, round(secs, 1)))
        self.log("SIGSTOP %d for %.1f s" % (v.i, secs))
        time.sleep(secs)
        v.proc.send_signal(signal.SIGCONT)
        v.stopped = False

    def fault_partition(self):
        n = self.args.nodes
        size = self.rng.choice([1, max(1, n // 3), n // 2, n - n // 3])
        cut = self.rng.sample(range(n), size)
        secs = self.rng.uniform(3, 10)
        self.faults.append(("partition", sorted(cut), round(secs, 1)))
        self.log("partition %s for %.1f s" % (sorted(cut), secs))
        for i in cut:
            self.net.port(i, False)
        time.sleep(secs)
        for i in cut:
            self.net.port(i, True)

    def fault_flap(self):
        i = self.rng.randrange(self.args.nodes)
        times = self.rng.randint(2, 5)
        self.faults.append(("flap", i, times))
        self.log("flap %d x%d" % (i, times))
        for _ in range(times):
            self.net.port(i, False)
            time.sleep(self.rng.uniform(0.5, 2))
            self.net.port(i, True)
            time.sleep(self.rng.uniform(0.5, 2))

    # ----- heal and check -----------------------------------------------

    def heal_and_check(self):
        for i in range(self.args.nodes):
            self.net.port(i, True)
        for n in self.nodes:
            if n.stopped:
                n.proc.send_signal(signal.SIGCONT)
                n.stopped = False
        healed = time.time()
        self.log("healed; waiting for the mesh and the replicas")
        # Let the last writes be answered (a frozen node answers late).
        time.sleep(2)
        rs2p = [n for n in self.nodes if not n.py2p]
        py2p = [n for n in self.nodes if n.py2p]
        connected_after = None
        attached_after = None
        converged_after = None
        dumps = None
        deadline = healed + self.args.settle
        while time.time() < deadline:
            if connected_after is None or attached_after is None:
                comp = self.component()
                if connected_after is None and all(n.i in comp for n in rs2p):
                    connected_after = time.time() - healed
                if attached_after is None and all(n.i in comp for n in self.nodes):
                    attached_after = time.time() - healed
            if connected_after is not None and converged_after is None:
                # py2p has no anti-entropy: only the rs2p replicas must agree.
                dumps = [n.ask({"cmd": "dump"}) for n in rs2p]
                if all(d is not None for d in dumps):
                    canon = [json.dumps(sorted(d["entries"], key=lambda e: json.dumps(e["key"])), sort_keys=True)
                             for d in dumps]
                    if all(c == canon[0] for c in canon):
                        converged_after = time.time() - healed
            if converged_after is not None and attached_after is not None:
                break
            time.sleep(1)
        violations = []
        for n in self.nodes:
            if n.crashed is not None:
                with open(os.path.join(self.tmp, "node%d.log" % n.i), errors="replace") as f:
                    tail = " | ".join(f.read().strip().splitlines()[-3:])
                violations.append("%s node %d died on its own (exit %s): %s"
                                  % ("py2p" if n.py2p else "rs2p", n.i, n.crashed, tail))
        if connected_after is None:
            violations.append("the mesh was not connected again within %d s" % self.args.settle)
        if converged_after is None:
            violations.append("replicas still differ %d s after the heal" % self.args.settle)
        py2p_missing = None
        withdrawn = None
        if dumps and all(d is not None for d in dumps):
            kinds = {n.i: n.py2p for n in self.nodes}
            rs2p_ops = [o for o in self.history if not kinds[o["node"]]]
            if self.args.leasing:
                # Under leases a write acknowledged during a partition is
                # withdrawn when the heal shows another node held the key
                # first (the lease rule): counted, not a violation. The
                # replicas must still agree.
                withdrawn = len(self.check_history(dumps[0]["entries"], rs2p_ops))
            else:
                violations += self.check_history(dumps[0]["entries"], rs2p_ops)
            # py2p acknowledges a write once it holds it itself and repairs
            # nothing: its writes made while cut off, or just before it was
            # killed, may never reach anyone. Counted, not a violation.
            py2p_missing = len(self.check_history(dumps[0]["entries"],
                                                  [o for o in self.history if kinds[o["node"]]]))
        acked = sum(1 for o in self.history if o["answer"] == "ok")
        report = {
            "leasing": self.args.leasing,
            "withdrawn_by_leases": withdrawn if self.args.leasing and dumps and all(d is not None for d in dumps) else None,
            "seed": self.seed,
            "nodes": self.args.nodes,
            "skews": [n.skew for n in self.nodes],
            "py2p_nodes": [n.i for n in py2p],
            "faults": self.faults,
            "ops": len(self.history),
            "acknowledged": acked,
            "refused": sum(1 for o in self.history if o["answer"] == "error"),
            "unanswered": sum(1 for o in self.history if o["answer"] is None),
            "py2p_acknowledged": sum(1 for o in self.history if o["answer"] == "ok" and self.nodes[o["node"]].py2p),
            "py2p_acknowledged_missing": py2p_missing,
            "connected_after_s": connected_after and round(connected_after, 1),
            "py2p_attached_after_s": attached_after and round(attached_after, 1),
            "converged_after_s": converged_after and round(converged_after, 1),
            "violations": violations,
        }
        return report

    def component(self):
        """The nodes reachable from node 0 over the links the nodes report."""
        ids = {}
        graph = {}
        for n in self.nodes:
            st = n.ask({"cmd": "peers"}, timeout=5)
            if n.id is not None:
                ids[n.id] = n.i
            graph[n.i] = [p["id"] for p in st.get("peers", [])] if st else []
        # A link counts from either end: a py2p node may list a peer the
        # other side has not finished admitting, and the other way round.
        adj = {i: set() for i in graph}
        for i, pids in graph.items():
            for pid in pids:
                j = ids.get(pid)
                if j is not None:
                    adj[i].add(j)
                    adj[j].add(i)
        seen, todo = {0}, [0]
        while todo:
            i = todo.pop()
            for j in adj[i]:
                if j not in seen:
                    seen.add(j)
                    todo.append(j)
        return seen

    def check_history(self, entries, ops=None):
        """Every acknowledged write of `ops` (default: all) present or
        superseded; no resurrection."""
        final = {e["key"]: e for e in entries}
        by_value = {o["value"]: o for o in self.history if o["kind"] == "set"}
        violations = []
        for o in self.history if ops is None else ops:
            if o["answer"] != "ok":
                continue
            # The version of o is at least its node's clock when issued.
            lower_ms = int((o["issued"] + o["skew"]) * 1000)
            f = final.get(o["key"])
            if f is None:
                if o["kind"] == "set" and not any(
                        d["kind"] == "delete" and d["key"] == o["key"] for d in self.history):
                    violations.append("op %d: %s=%s acknowledged, the key is gone and was never deleted"
                                      % (o["op"], o["key"], o["value"]))
                continue
            if o["kind"] == "set" and f["value"] == o["value"]:
                continue
            winner = by_value.get(f["value"])
            newest_ms = f["timestamp"] * 1000 + 999
            if newest_ms < lower_ms:
                what = "resurrected after acknowledged delete" if o["kind"] == "delete" else "lost"
                violations.append("op %d (%s %s on node %d) %s: the key holds %r from %s at %d s, older than %d ms"
                                  % (o["op"], o["kind"], o["key"], o["node"], what, f["value"],
                                     "op %d" % winner["op"] if winner else "?", f["timestamp"], lower_ms))
        return violations


def selftest():
    """The checker on made-up histories: it must flag a lost write and a
    resurrection, and accept a superseded write."""
    class Args:
        nodes, keep = 1, True

    lab = Lab.__new__(Lab)
    t = 1_800_000_000.0

    def op(n, kind, key, issued, value=None, skew=0):
        return {"op": n, "node": 0, "kind": kind, "key": key, "issued": issued, "answer": "ok",
                "skew": skew, "value": value}

    # k1: op2 (later) was acknowledged, but the key holds op1's older value.
    lab.history = [op(1, "set", "k1", t, "op1"), op(2, "set", "k1", t + 5, "op2")]
    lost = lab.check_history([{"key": "k1", "value": "op1", "owner": "a", "timestamp": int(t)}])
    assert len(lost) == 1 and "lost" in lost[0], lost
    # The same, but op1 was stamped later (a node 30 s ahead): superseded.
    lab.history = [op(1, "set", "k1", t, "op1", skew=30), op(2, "set", "k1", t + 5, "op2")]
    ok = lab.check_history([{"key": "k1", "value": "op1", "owner": "a", "timestamp": int(t + 30)}])
    assert ok == [], ok
    # A delete acknowledged after the value it should have removed.
    lab.history = [op(1, "set", "k2", t, "op1"), op(2, "delete", "k2", t + 5)]
    back = lab.check_history([{"key": "k2", "value": "op1", "owner": "a", "timestamp": int(t)}])
    assert len(back) == 1 and "resurrected" in back[0], back
    # A key gone that nobody deleted.
    lab.history = [op(1, "set", "k3", t, "op1")]
    gone = lab.check_history([])
    assert len(gone) == 1 and "never deleted" in gone[0], gone
    print("faultlab selftest: the checker flags a lost write, a resurrection and a vanished key, "
          "and accepts a superseded write")


def setup_check(args):
    missing = [t for t in ("ip",) if shutil.which(t) is None]
    if not os.path.exists(FAKETIME_LIB):
        missing.append("libfaketime (" + FAKETIME_LIB + ")")
    if os.geteuid() != 0:
        sys.exit("faultlab: needs root (network namespaces)")
    if missing:
        sys.exit("faultlab: missing %s: run scripts/setup-faultlab.sh" % ", ".join(missing))
    if not os.path.exists(BIN):
        sys.exit("faultlab: build the node first: cargo build --release -p rs2p-cli")
    if args.py2p and not os.path.exists(PY2P_PYTHON):
        sys.exit("faultlab: --py2p needs the py2p peer: run scripts/setup-py2p.sh")


def print_report(r):
    print("seed %d: %d nodes, %d ops (%d acknowledged, %d unanswered), %d faults; connected after %s s, "
          "replicas identical after %s s; %s"
          % (r["seed"], r["nodes"], r["ops"], r["acknowledged"], r["unanswered"], len(r["faults"]),
             r["connected_after_s"], r["converged_after_s"],
             "OK" if not r["violations"] else "%d VIOLATIONS" % len(r["violations"])), flush=True)
    if r.get("leasing"):
        print("   leases on: %s acknowledged writes withdrawn by the lease rule" % r.get("withdrawn_by_leases"),
              flush=True)
    if r["py2p_nodes"]:
        print("   py2p nodes %s: attached after %s s; %d writes acknowledged by py2p, %s of them missing"
              % (r["py2p_nodes"], r["py2p_attached_after_s"], r["py2p_acknowledged"],
                 r["py2p_acknowledged_missing"]), flush=True)
    for v in r["violations"][:20]:
        print("   ! " + v, flush=True)


def summary(paths):
    """Totals of campaign reports (the JSON lines `--out` wrote)."""
    reports = [json.loads(line) for p in paths for line in open(p) if line.strip()]
    faults = {}
    for r in reports:
        for f in r["faults"]:
            faults[f[0]] = faults.get(f[0], 0) + 1
    skews = sorted({abs(s) for r in reports for s in r["skews"] if s})
    with_py2p = [r for r in reports if r.get("py2p_nodes")]
    conv = sorted(r["converged_after_s"] for r in reports if r["converged_after_s"] is not None)
    bad = [r for r in reports if r["violations"]]
    print("schedules: %d (%d with py2p nodes), nodes per schedule: %s" % (
        len(reports), len(with_py2p), sorted({r["nodes"] for r in reports})))
    print("faults: %s; clock skews drawn from: %s s" % (
        ", ".join("%s %d" % kv for kv in sorted(faults.items())), skews))
    print("writes: %d, acknowledged %d (of which by py2p nodes %d), refused %d, unanswered %d" % (
        sum(r["ops"] for r in reports), sum(r["acknowledged"] for r in reports),
        sum(r.get("py2p_acknowledged", 0) for r in reports), sum(r["refused"] for r in reports),
        sum(r["unanswered"] for r in reports)))
    if conv:
        print("replicas identical after the heal: median %.1f s, 90th percentile %.1f s, max %.1f s" % (
            conv[len(conv) // 2], conv[int(len(conv) * 0.9)], conv[-1]))
    if with_py2p:
        attached = [r["py2p_attached_after_s"] for r in with_py2p]
        print("py2p nodes linked again after the heal: %d of %d schedules (the rest within the settle time: no); "
              "py2p's own acknowledged writes missing: %d of %d" % (
                  sum(a is not None for a in attached), len(with_py2p),
                  sum(r.get("py2p_acknowledged_missing") or 0 for r in with_py2p),
                  sum(r.get("py2p_acknowledged", 0) for r in with_py2p)))
    print("schedules with violations: %d%s" % (len(bad), "".join(
        "\n  seed %d: %s" % (r["seed"], "; ".join(r["violations"][:3])) for r in bad)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("selftest", help="check the checker on made-up histories")
    sp = sub.add_parser("summary", help="totals of campaign reports (JSON lines from --out)")
    sp.add_argument("files", nargs="+")
    for name in ("run", "campaign"):
        p = sub.add_parser(name)
        p.add_argument("--nodes", type=int, default=5 if name == "run" else 20)
        p.add_argument("--seconds", type=int, default=40 if name == "run" else 60)
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--keys", type=int, default=20)
        p.add_argument("--rate", type=float, default=20, help="writes per second, whole lab")
        p.add_argument("--settle", type=int, default=60, help="seconds allowed after the heal")
        p.add_argument("--faults", default="kill,freeze,partition,flap")
        p.add_argument("--skews", default="30", help="clock offsets to draw from, seconds (e.g. 30,300,3600)")
        p.add_argument("--skew-share", type=float, default=0.4, help="share of nodes started with a skew")
        p.add_argument("--freeze", default="5,10", help="freeze length range, seconds")
        p.add_argument("--keep", action="store_true", help="keep the data directories and logs")
        p.add_argument("--py2p", type=int, default=0, help="py2p nodes among the nodes (memory only)")
        p.add_argument("--leasing", action="store_true",
                       help="leases on (the checker then requires agreement and counts withdrawn writes)")
        p.add_argument("--py2p-every", type=int, default=1,
                       help="only schedules whose seed is a multiple of this have py2p nodes")
        if name == "campaign":
            p.add_argument("--schedules", type=int, default=200)
            p.add_argument("--out", default=None, help="write every report here (JSON lines)")
    args = ap.parse_args()
    if args.cmd == "selftest":
        selftest()
        return
    if args.cmd == "summary":
        summary(args.files)
        return
    args.faults = args.faults.split(",")
    args.skews = [int(s) for s in args.skews.split(",")]
    args.freeze = [float(s) for s in args.freeze.split(",")]
    setup_check(args)
    # SIGTERM unwinds like Ctrl-C, so the namespaces are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    seeds = [args.seed] if args.cmd == "run" else range(args.seed, args.seed + args.schedules)
    failed = 0
    out = open(args.out, "a") if getattr(args, "out", None) else None
    for seed in seeds:
        print("faultlab: seed %d, %d nodes, %d s of faults" % (seed, args.nodes, args.seconds), flush=True)
        report = Lab(args, seed).run()
        print_report(report)
        failed += bool(report["violations"])
        if out:
            out.write(json.dumps(report) + "\n")
            out.flush()
    if args.cmd == "campaign":
        print("faultlab campaign: %d schedules, %d with violations" % (len(seeds), failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
