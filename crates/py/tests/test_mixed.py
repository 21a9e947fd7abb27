"""One network of rs2p-package nodes and real py2p 0.7.878 nodes (py2p runs
in this process, imported as itself): broadcast, whisper, reply and the
synced dictionary, both ways."""

import socket
import time

import pytest

import py2p.mesh
import py2p.sync
from rs2p import flags, mesh, sync
from conftest import wait_for


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def py2p_nodes():
    made = []

    def make(kind="mesh", **kwargs):
        cls = {"mesh": py2p.mesh.MeshSocket, "sync": py2p.sync.SyncSocket}[kind]
        n = cls("127.0.0.1", free_port(), **kwargs)
        made.append(n)
        return n

    yield make
    for n in made:
        try:
            n.close()
        except Exception:
            pass


def recv_py2p(node, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = node.recv()
        if m is not None:
            return m
        time.sleep(0.01)
    pytest.fail("py2p received nothing")


def test_broadcast_whisper_and_reply_both_ways(sockets, py2p_nodes):
    rs = sockets()
    py = py2p_nodes()
    py.connect(*rs.out_addr)
    wait_for("linked", lambda: py.id in rs.routing_table and rs.id in py.routing_table)
    # rs2p -> py2p: a broadcast, every value type py2p can hold.
    rs.send(b"bytes", "str", 7, -7, 1.5, None, True, [1, b"x"], {"k": b"v"})
    m = recv_py2p(py)
    assert m.sender == rs.id
    assert list(m.packets) == [flags.broadcast, b"bytes", "str", 7, -7, 1.5, None, True, [1, b"x"], {"k": b"v"}]
    # py2p replies (a whisper on the direct link).
    m.reply(b"py2p says hi")
    back = next(rs.messages(timeout=10))
    assert back.sender == py.id and back.packets == (flags.whisper, b"py2p says hi")
    # py2p -> rs2p: a broadcast; rs2p replies.
    py.send(b"from py2p", "text")
    got = next(rs.messages(timeout=10))
    assert got.packets == (flags.broadcast, b"from py2p", "text") and got.sender == py.id
    assert got.verified is False  # py2p signs nothing
    got.reply(b"rs2p answers")
    assert list(recv_py2p(py).packets) == [flags.whisper, b"rs2p answers"]
    # A whisper through the routing table's connection, both ways.
    rs.routing_table[py.id].send(flags.whisper, flags.whisper, b"rs whisper")
    assert list(recv_py2p(py).packets) == [flags.whisper, b"rs whisper"]
    py.routing_table[rs.id].send(flags.whisper, flags.whisper, b"py whisper")
    assert next(rs.messages(timeout=10)).packets == (flags.whisper, b"py whisper")
    assert rs.status == "Nominal" and py.status == "Nominal"


def test_relay_through_each_other(sockets, py2p_nodes, monkeypatch):
    """rs2p - py2p - rs2p and py2p - rs2p - py2p chains deliver broadcasts."""
    monkeypatch.setattr(mesh, "max_outgoing", 1)
    r1, r2 = sockets(), sockets()
    p1 = py2p_nodes()
    p1.connect(*r1.out_addr)
    r2.connect(*p1.out_addr)
    wait_for("chain", lambda: len(p1.routing_table) == 2 and p1.id in r1.routing_table and p1.id in r2.routing_table)
    r1.send(b"across py2p")
    assert next(r2.messages(timeout=10)).packets == (0, b"across py2p")
    p2, p3 = py2p_nodes(), py2p_nodes()
    r3 = sockets()
    p2.connect(*r3.out_addr)
    p3.connect(*r3.out_addr)
    # py2p's daemon thread may take a moment to process rs2p's handshake.
    wait_for(
        "py2p pair through rs2p",
        lambda: len(r3.routing_table) == 2 and r3.id in p2.routing_table and r3.id in p3.routing_table,
    )
    p2.send(b"across rs2p")
    assert list(recv_py2p(p3).packets) == [0, b"across rs2p"]


def test_messages_between_rs2p_nodes_are_verified(sockets):
    a, b = sockets(), sockets()
    b.connect(*a.out_addr)
    wait_for("linked", lambda: a.id in b.routing_table and b.id in a.routing_table)
    a.send(b"signed")
    got = next(b.messages(timeout=10))
    assert got.packets == (flags.broadcast, b"signed") and got.sender == a.id
    assert got.verified is True
    b.routing_table[a.id].send(flags.whisper, flags.whisper, b"on a proven link")
    got = next(a.messages(timeout=10))
    assert got.packets == (flags.whisper, b"on a proven link") and got.verified is True


def test_synced_dictionary_both_ways(sockets, py2p_nodes):
    rs = sockets("sync")
    py = py2p_nodes("sync")
    rs["before"] = b"transferred on connect"
    py.connect(*rs.out_addr)
    wait_for("linked", lambda: py.id in rs.routing_table and rs.id in py.routing_table)
    wait_for("py2p got the state", lambda: py.get("before") == b"transferred on connect")
    rs["from rs2p"] = {"n": 1}
    wait_for("py2p sees rs2p's write", lambda: py.get("from rs2p") == {"n": 1})
    time.sleep(0.2)
    py["from py2p"] = [1, 2, 3]
    wait_for("rs2p sees py2p's write", lambda: rs.get("from py2p") == [1, 2, 3])
    assert rs.getmeta("from py2p").owner == py.id
    # Leases hold across the two implementations (a second later: within
    # the same second py2p lets the smaller id take a key, its tie rule).
    time.sleep(1.1)
    with pytest.raises(KeyError):
        rs["from py2p"] = "taken"
    with pytest.raises(KeyError):
        py["from rs2p"] = "taken"
    del rs["from rs2p"]
    wait_for("py2p sees the delete", lambda: py.get("from rs2p", "gone") == "gone")
