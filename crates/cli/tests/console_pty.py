"""Drives the `rs2p node` console through a pseudo-terminal, as a person
would, next to a JSON-mode peer that sees what the console sends.

Usage: console_pty.py PATH_TO_RS2P. Exits non-zero with a reason on any
failure; every wait is bounded. Run by tests/console.rs.
"""

import json
import os
import pty
import queue
import select
import signal
import subprocess
import sys
import threading
import time

BIN = sys.argv[1]
TIMEOUT = 20.0


def fail(why):
    print("FAIL:", why, file=sys.stderr)
    sys.exit(1)


class Peer:
    """A JSON-mode node that the console connects to."""

    def __init__(self):
        self.p = subprocess.Popen([BIN, "node", "--json"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        self.ready = json.loads(self.p.stdout.readline())
        self.events = queue.Queue()
        self.seen = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.events.put(json.loads(line))

    def send(self, cmd):
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()

    def expect(self, what, pred):
        deadline = time.time() + TIMEOUT
        while time.time() < deadline:
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(event)
            if pred(event):
                return event
        fail(f"the peer never saw {what}; it saw {self.seen}")


class Console:
    def __init__(self, *args):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execv(BIN, [BIN, "node", *args])
        self.seen = b""

    def type(self, keys):
        os.write(self.fd, keys)

    def wait_for(self, text, after=0):
        """Waits until `text` appears in the output past offset `after`;
        returns the offset just past it."""
        deadline = time.time() + TIMEOUT
        while True:
            at = self.seen.find(text, after)
            if at >= 0:
                return at + len(text)
            if time.time() > deadline:
                fail(f"never saw {text!r}; output so far:\n{self.seen.decode(errors='replace')}")
            r, _, _ = select.select([self.fd], [], [], 0.2)
            if r:
                try:
                    self.seen += os.read(self.fd, 65536)
                except OSError:
                    fail(f"console exited early; output:\n{self.seen.decode(errors='replace')}")

    def exit_status(self):
        deadline = time.time() + TIMEOUT
        while time.time() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return status
            try:
                r, _, _ = select.select([self.fd], [], [], 0.1)
                if r:
                    self.seen += os.read(self.fd, 65536)
            except OSError:
                time.sleep(0.1)
        os.kill(self.pid, signal.SIGKILL)
        fail("the console did not exit")


peer = Peer()
con = Console("--connect", peer.ready["addr"])
pos = con.wait_for(b"rs2p> ")
pos = con.wait_for(b"peer up", pos)
peer.expect("peer_up", lambda e: e["event"] == "peer_up")

# help, typed.
con.type(b"help\r")
pos = con.wait_for(b"reply ID TEXT", pos)

# Tab completes a command; the peer receives exactly the text typed.
con.type(b"broad\thello there\r")
pos = con.wait_for(b"-> broadcast to 1 peer", pos)
peer.expect('[hello there]', lambda e: e["event"] == "message" and e["packets"] == ["hello there"])

# Line editing: Left, Left, Backspace edit the line; no escape bytes leak.
con.type(b"broadcast abcd\x1b[D\x1b[D\x7f\r")
pos = con.wait_for(b"-> broadcast to 1 peer", pos)
peer.expect('[acd]', lambda e: e["event"] == "message" and e["packets"] == ["acd"])

# History: Up recalls the last line, to be edited again.
con.type(b"\x1b[Ae\r")
pos = con.wait_for(b"-> broadcast to 1 peer", pos)
peer.expect('[acde]', lambda e: e["event"] == "message" and e["packets"] == ["acde"])

# An event arriving while a line is half typed is printed above it, and the
# half-typed line is drawn again below.
con.type(b"broadcast half")
pos = con.wait_for(b"broadcast half", pos)
peer.send({"cmd": "broadcast", "packets": ["interrupting you"]})
pos = con.wait_for(b"interrupting you", pos)
pos = con.wait_for(b"broadcast half", pos)
con.type(b" done\r")
pos = con.wait_for(b"-> broadcast to 1 peer", pos)
peer.expect('[half done]', lambda e: e["event"] == "message" and e["packets"] == ["half done"])

# Tab completes a peer id; whisper says where it went.
peer_id = peer.ready["id"]
con.type(b"whisper " + peer_id[:3].encode() + b"\tpsst\r")
pos = con.wait_for(b"-> whisper to " + peer_id[:12].encode(), pos)
peer.expect('[psst]', lambda e: e["event"] == "message" and e["kind"] == "whisper" and e["packets"] == ["psst"])

# Mistakes get a usage line, not a send.
con.type(b"whisper\r")
pos = con.wait_for(b"usage: whisper ID TEXT", pos)
con.type(b"broadcast\r")
pos = con.wait_for(b"usage: broadcast TEXT", pos)

# A byte that is not UTF-8 does not stop the console.
con.type(b"broadcast caf\xe9\r")
pos = con.wait_for(b"not UTF-8", pos)
con.type(b"status\r")
pos = con.wait_for(b"peers 1", pos)

# Ctrl-D on an empty line leaves; the peer is told.
con.type(b"\x04")
status = con.exit_status()
if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
    fail(f"exit status {status}; output:\n{con.seen.decode(errors='replace')}")
peer.expect("peer quit", lambda e: e["event"] == "peer_down" and e["reason"] == "peer quit")
if b"unknown command" in con.seen:
    fail("a keystroke was taken as a command")
peer.send({"cmd": "quit"})
peer.p.wait(timeout=TIMEOUT)
print("console OK")
