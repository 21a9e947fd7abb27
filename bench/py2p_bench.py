"""py2p 0.7.878 side of rs2p's benchmark suite (run by rs2p-bench).

Chain workloads (throughput, latency) run one py2p node per process (the
interop driver, tests/interop/py2p_peer.py), since py2p nodes sharing one
interpreter mostly wait on each other's GIL; formation, memory and sync run
the nodes in this process. Everything is on 127.0.0.1 with OS-assigned
ports; the result is one JSON line. Usage: py2p_bench.py WORKLOAD ARGS...
"""
import os
import queue
import subprocess
import json
import random
import resource
import sys
import threading
import time
from hashlib import sha384

from base58 import b58encode_int
from py2p import base, mesh, sync


def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def peak_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def node(cls=mesh.MeshSocket, **kw):
    prot = kw.pop("prot", base.Protocol("mesh", "Plaintext"))
    s = cls("127.0.0.1", 0, prot=prot, **kw)
    s.out_addr = ("127.0.0.1", s.daemon.sock.getsockname()[1])
    # py2p derives the id from out_addr (port 0 at construction) and a
    # per-process salt: nodes of one process would all share it. Redo
    # py2p's own derivation with the real port.
    h = sha384(str(s.out_addr).encode() + s.protocol.id + base.user_salt)
    s.id = b58encode_int(int(h.hexdigest(), 16))
    return s


def wait(cond, secs):
    end = time.time() + secs
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def chain(n, cls=mesh.MeshSocket, **kw):
    mesh.max_outgoing = 0
    nodes = [node(cls, **kw) for _ in range(n)]
    for i in range(n - 1):
        nodes[i].connect("127.0.0.1", nodes[i + 1].out_addr[1])
        time.sleep(0.05)
    ok = wait(lambda: all(len(x.routing_table) >= (1 if i in (0, n - 1) else 2) for i, x in enumerate(nodes)), 10)
    if not ok:
        raise SystemExit("chain did not form")
    return nodes


def close(nodes):
    for x in nodes:
        try:
            x.close()
        except Exception:
            pass


class Counter(threading.Thread):
    """Drains every node's queue (an application consuming messages)."""

    def __init__(self, nodes, far):
        super().__init__(daemon=True)
        self.nodes, self.far = nodes, far
        self.count, self.last = 0, time.time()
        self.alive = True

    def run(self):
        while self.alive:
            idle = True
            for x in self.nodes:
                msgs = x.recv(1000)
                if msgs:
                    idle = False
                    if x is self.far:
                        self.count += len(msgs)
                        self.last = time.time()
            if idle:
                time.sleep(0.001)


DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "rs2p", "tests", "interop", "py2p_peer.py")


class Proc:
    """One py2p node in its own process, driven over JSON lines."""

    def __init__(self, *flags):
        self.p = subprocess.Popen([sys.executable, "-u", DRIVER, *flags], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, bufsize=1)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self.expect("ready")
        self.addr = ready["addr"]

    def _read(self):
        for line in self.p.stdout:
            try:
                self.lines.put((time.time(), json.loads(line)))
            except ValueError:
                # py2p prints its own notices to stdout when a link breaks.
                pass

    def cmd(self, **c):
        self.p.stdin.write(json.dumps(c) + "\n")

    def expect(self, event, timeout=10):
        end = time.time() + timeout
        while True:
            t, j = self.lines.get(timeout=max(end - time.time(), 0.001))
            if j.get("event") == event:
                return j

    def peers(self):
        self.cmd(cmd="peers")
        return len(self.expect("peers")["peers"])

    def quit(self):
        try:
            self.cmd(cmd="quit")
            self.p.stdin.flush()
            self.p.wait(timeout=5)
        except Exception:
            self.p.kill()


def proc_chain(n):
    nodes = [Proc("--max-outgoing", "0") for _ in range(n)]
    for i in range(n - 1):
        nodes[i].cmd(cmd="connect", addr=nodes[i + 1].addr)
    ok = wait(lambda: all(x.peers() >= (1 if i in (0, n - 1) else 2) for i, x in enumerate(nodes)), 15)
    if not ok:
        raise SystemExit("chain did not form")
    return nodes


def throughput(n, count, size):
    nodes = proc_chain(n)
    payload = {"$bytes": "q6ur" * (size // 3)}
    far = nodes[-1]
    t0 = time.time()
    for k in range(count):
        nodes[0].cmd(cmd="broadcast", packets=[k, payload])
    got, last = 0, t0
    while got < count:
        try:
            t, j = far.lines.get(timeout=10)
        except queue.Empty:
            break
        if j.get("event") == "message":
            got, last = got + 1, t
    for x in nodes:
        x.quit()
    secs = max(last - t0, 1e-9)
    return {"rate": got / secs, "lost": count - got, "secs": secs}


def latency(n, messages):
    nodes = proc_chain(n)
    far, every = [], []
    for k in range(messages):
        t0 = time.time()
        nodes[0].cmd(cmd="broadcast", packets=[k])
        for i in range(1, n):
            try:
                t, _ = next((t, j) for t, j in iter(lambda: nodes[i].lines.get(timeout=5), None)
                            if j.get("event") == "message")
            except queue.Empty:
                break
            d = (t - t0) * 1e6
            every.append(d)
            if i == n - 1:
                far.append(d)
    for x in nodes:
        x.quit()
    far.sort()
    every.sort()
    pct = lambda v, p: v[int(round((len(v) - 1) * p))] if v else None
    return {"far_p50_us": pct(far, 0.5), "far_p99_us": pct(far, 0.99),
            "all_p50_us": pct(every, 0.5), "all_p99_us": pct(every, 0.99), "delivered": len(far)}


def connected(nodes):
    index = {x.id: i for i, x in enumerate(nodes)}
    seen, stack = {0}, [0]
    while stack:
        i = stack.pop()
        for pid in list(nodes[i].routing_table):
            j = index.get(pid)
            if j is not None and j not in seen:
                seen.add(j)
                stack.append(j)
    return len(seen) == len(nodes)


def formation(n, timeout):
    mesh.max_outgoing = 4
    nodes = [node() for _ in range(n)]
    rnd = random.Random(n)
    t0 = time.time()
    for i in range(1, n):
        try:
            nodes[i].connect("127.0.0.1", nodes[rnd.randrange(i)].out_addr[1])
        except Exception:
            pass
    def ok():
        for x in nodes:
            rt = len(x.routing_table)
            if not (len(list(x.outgoing)) >= min(4, n - 1) or rt == n - 1):
                return False
        return connected(nodes)
    formed = wait(ok, timeout)
    out = {"formed_ms": (time.time() - t0) * 1e3 if formed else None, "nodes": n}
    close(nodes)
    return out


def memory(n):
    mesh.max_outgoing = 4
    before = rss_kib()
    nodes = []
    for i in range(n):
        x = node()
        if i > 0:
            x.connect("127.0.0.1", nodes[i // 2].out_addr[1])
        nodes.append(x)
    time.sleep(2)
    after = rss_kib()
    links = sum(len(x.routing_table) for x in nodes) / n
    close(nodes)
    return {"kib_per_node": (after - before) / n, "links_per_node": links}


def sync_chain(n, keys):
    nodes = chain(n, sync.SyncSocket, prot=base.Protocol("sync", "Plaintext"), leasing=False)
    t0 = time.time()
    for k in range(keys):
        nodes[0]["key-%d" % k] = k
    done = wait(lambda: all(len(x) >= keys for x in nodes), 60)
    out = {"ms": (time.time() - t0) * 1e3 if done else None, "held": [len(x) for x in nodes]}
    close(nodes)
    return out


def sync_join(keys):
    a = node(sync.SyncSocket, prot=base.Protocol("sync", "Plaintext"), leasing=False)
    for k in range(keys):
        a["key-%d" % k] = k
    b = node(sync.SyncSocket, prot=base.Protocol("sync", "Plaintext"), leasing=False)
    t0 = time.time()
    b.connect("127.0.0.1", a.out_addr[1])
    done = wait(lambda: len(b) >= keys, 120)
    out = {"ms": (time.time() - t0) * 1e3 if done else None, "held": len(b)}
    close([a, b])
    return out


def main():
    w, args = sys.argv[1], [int(a) for a in sys.argv[2:]]
    fn = {"throughput": throughput, "latency": latency, "formation": formation, "scale": formation,
          "memory": memory, "sync-chain": sync_chain, "sync-join": sync_join}[w]
    out = fn(*args)
    out["peak_rss_kib"] = peak_kib()
    print(json.dumps(out))
    sys.stdout.flush()
    # py2p's daemon threads do not always stop; do not wait for them.
    import os
    os._exit(0)


if __name__ == "__main__":
    main()
