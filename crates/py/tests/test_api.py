"""Every documented name of the py2p API, as rs2p provides it."""

import asyncio
import socket
import threading
import time

import pytest

import rs2p
from rs2p import base, flags, mesh, sync
from conftest import link, wait_for


def test_modules_expose_py2p_names():
    assert mesh.MeshSocket and mesh.Protocol is base.Protocol and mesh.max_outgoing == 4
    assert sync.SyncSocket and sync.Protocol is base.Protocol and sync.metatuple
    assert base.Message and base.BaseConnection and base.flags is flags
    assert mesh.default_protocol == base.Protocol("mesh", "Plaintext")
    assert sync.default_protocol == base.Protocol("sync", "Plaintext")
    assert isinstance(rs2p.__version__, str)


def test_flags_match_py2p_exactly():
    import py2p.flags as theirs  # the reference, installed beside rs2p

    names = [n for n in dir(theirs) if not n.startswith("_")]
    assert names
    for n in names:
        assert getattr(flags, n) == getattr(theirs, n), n


def test_protocol_ids_match_py2p():
    from py2p.base import Protocol as TheirProtocol

    for subnet, enc in [("mesh", "Plaintext"), ("", "SSL"), ("sync1", "Plaintext"), ("x" * 40, "Plaintext")]:
        assert base.Protocol(subnet, enc).id == TheirProtocol(subnet, enc).id


def test_binds_at_once_and_refuses_a_used_address(sockets):
    a = sockets()
    host, port = a.out_addr
    with pytest.raises(OSError):
        mesh.MeshSocket("127.0.0.1", port)
    # The port really is taken while the socket lives.
    probe = socket.socket()
    with pytest.raises(OSError):
        probe.bind(("127.0.0.1", port))
    probe.close()
    with pytest.raises(ValueError):
        mesh.MeshSocket("127.0.0.1", 0, prot=base.Protocol("x", "ROT13"))


def test_socket_attributes(sockets):
    a = sockets(out_addr=("127.0.0.1", 1))
    assert isinstance(a.id, bytes) and 60 <= len(a.id) <= 68
    assert a.out_addr == ("127.0.0.1", 1)
    assert a.protocol == mesh.default_protocol
    assert a.routing_table == {} and a.awaiting_ids == []
    assert list(a.outgoing) == [] and list(a.incoming) == []
    assert a.status == "Nominal"
    assert a.debug_level == 0


def test_connect_send_recv_both_shapes(sockets):
    a, b = sockets(), sockets()
    connected = []
    a.on("connect", lambda sock: connected.append(sock))
    assert b.connect(*a.out_addr) is None
    wait_for("linked", lambda: a.id in b.routing_table and b.id in a.routing_table)
    wait_for("connect event", lambda: connected == [a])
    assert b.connect(*a.out_addr, id=a.id) is False, "already connected"
    conn = b.routing_table[a.id]
    assert (conn.id, conn.addr, conn.outgoing) == (a.id, a.out_addr, True)
    assert list(b.outgoing) == [a.id] and list(a.incoming) == [b.id]
    assert b.recv() is None and b.recv(5) == []
    for i in range(3):
        a.send("m", i)
    wait_for("three messages", lambda: b.counters()["delivered"] >= 3)
    one = b.recv()
    assert isinstance(one, base.Message) and one.packets == (flags.broadcast, "m", 0)
    rest = b.recv(10)
    assert [m.packets[2] for m in rest] == [1, 2]
    assert b.recv(10) == []


def test_message_fields_and_direct_reply(sockets):
    a, b = sockets(), sockets()
    link(a, b)
    a.send(b"ping")
    msg = next(b.messages(timeout=5))
    assert msg.sender == a.id and msg.msg_type == flags.broadcast
    assert abs(msg.time - time.time()) < 5 and msg.time_58
    assert isinstance(msg.id, bytes) and len(msg.id) == 32
    assert len(msg) > 32 and "Message(type=0" in repr(msg)
    msg.reply(b"pong")
    back = next(a.messages(timeout=5))
    assert back.packets == (flags.whisper, b"pong") and back.msg_type == flags.whisper


def test_reply_routes_to_a_node_not_directly_connected(sockets, monkeypatch):
    monkeypatch.setattr(mesh, "max_outgoing", 1)
    a, b, c = sockets(), sockets(), sockets()
    a.connect(*b.out_addr)
    c.connect(*b.out_addr)
    wait_for("b has both", lambda: len(b.routing_table) == 2)
    time.sleep(0.3)
    assert c.id not in a.routing_table, "a and c only meet through b"
    a.send(b"from a")
    msg = next(c.messages(timeout=5))
    msg.reply(b"routed back")
    back = next(a.messages(timeout=10))
    assert back.sender == c.id and back.packets == (flags.whisper, b"routed back")


def test_whisper_type_and_custom_subflag(sockets):
    a, b = sockets(), sockets()
    link(a, b)
    a.send(b"just my peers", flag=flags.whisper, type=flags.whisper)
    m = next(b.messages(timeout=5))
    assert m.msg_type == flags.whisper and m.packets == (flags.whisper, b"just my peers")
    seen = []

    def custom(msg, handler):
        if msg.packets[0] == 0x40:
            seen.append((msg.packets, handler.id))
            return True

    b.register_handler(custom)
    a.send(b"x", type=0x40)
    wait_for("custom sub-flag reaches the handler", lambda: seen == [((0x40, b"x"), a.id)])
    with pytest.raises(ValueError):
        a.send(b"x", flag=flags.renegotiate)
    with pytest.raises(TypeError):
        a.send(b"x", type="flag")
    with pytest.raises(TypeError):
        a.send(b"x", colour="red")


def test_send_refuses_unserialisable_arguments(sockets):
    a = sockets()
    for bad in (object(), {1, 2}, 2**64, -(2**63) - 1, complex(1, 2)):
        with pytest.raises(TypeError):
            a.send(bad)
    looped = []
    looped.append(looped)
    with pytest.raises(TypeError):
        a.send(looped)
    with pytest.raises(ValueError):
        a.send(b"x" * (17 << 20))


def test_register_handler_checks_the_signature_and_chain(sockets):
    a, b = sockets(), sockets()
    with pytest.raises(ValueError):
        a.register_handler(lambda msg: None)
    with pytest.raises(ValueError):
        a.register_handler(lambda msg, handler, extra: None)
    calls = []

    class Holder:
        def method(self, msg, handler):
            calls.append("method")

    a.register_handler(Holder().method)
    a.register_handler(lambda msg, handler: calls.append("first") or msg.packets[1] == b"stop")
    a.register_handler(lambda msg, handler: calls.append("second"))
    link(a, b)
    b.send(b"stop")
    wait_for("chain stopped", lambda: calls == ["method", "first"])
    assert a.recv() is None, "a truthy handler keeps the message out of the queue"
    b.send(b"go on")
    wait_for("whole chain", lambda: calls[2:] == ["method", "first", "second"])
    wait_for("queued", lambda: a.recv() is not None)


def test_request_peers(sockets):
    a, b, c = sockets(), sockets(), sockets()
    link(a, b)
    link(a, c)
    b.request_peers()
    wait_for("b learns c through a", lambda: c.id in b.routing_table)


def test_disconnect_and_close(sockets, monkeypatch):
    # Nodes that keep no outgoing target do not redial what was dropped.
    monkeypatch.setattr(mesh, "max_outgoing", 0)
    a, b, c = sockets(), sockets(), sockets()
    link(a, b)
    link(a, c)
    a.disconnect(a.routing_table[b.id])
    wait_for("a dropped b", lambda: b.id not in a.routing_table and a.id not in b.routing_table)
    assert c.id in a.routing_table
    c.close()
    with pytest.raises(RuntimeError):
        c.close()
    assert c.routing_table == {}


def test_events_api(sockets):
    a = sockets()
    got = []

    @a.on("custom")
    def first(x):
        got.append(("first", x))

    a.once("custom", lambda x: got.append(("once", x)))
    assert a.listeners("custom")[0] is first
    assert a.emit("custom", 1) is True
    assert a.emit("custom", 2) is True
    assert got == [("first", 1), ("once", 1), ("first", 2)]
    a.remove_listener("custom", first)
    assert a.emit("custom", 3) is False
    a.on("x", first)
    a.remove_all_listeners()
    assert a.listeners("x") == []


def test_async_listener_runs_on_the_registering_threads_loop(sockets):
    a, b = sockets(), sockets()
    loop = asyncio.new_event_loop()
    seen = []

    async def on_message(sock):
        seen.append((sock, threading.current_thread().name))

    def register():
        asyncio.set_event_loop(loop)
        b.on("message", on_message)

    t = threading.Thread(target=register, name="loop-thread")
    t.start()
    t.join()
    link(a, b)
    a.send(b"hello")

    async def until_seen():
        for _ in range(500):
            if seen:
                return
            await asyncio.sleep(0.01)

    loop.run_until_complete(until_seen())
    loop.close()
    assert seen and seen[0][0] is b
    assert seen[0][1] == threading.current_thread().name, "ran where the loop runs"


def test_next_message_awaits_without_blocking_the_loop(sockets):
    a, b = sockets(), sockets()
    link(a, b)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.ensure_future(ticker())
        a.send(b"later")
        msg = await b.next_message(timeout=5)
        nothing = await b.next_message(timeout=0.2)
        t.cancel()
        return msg, nothing, ticks

    msg, nothing, ticks = asyncio.run(main())
    assert msg.packets == (flags.broadcast, b"later") and nothing is None and ticks > 5


def test_tls_sockets_and_pins(sockets):
    prot = base.Protocol("", "SSL")
    a = sockets(prot=prot)
    b = sockets(prot=prot, tls_pins=[a.tls_fingerprint])
    link(a, b)
    a.send(b"secret")
    assert next(b.messages(timeout=5)).packets == (0, b"secret")
    impostor = sockets(prot=prot)
    c = sockets(prot=prot, tls_pins=[a.tls_fingerprint])
    with pytest.raises(OSError):
        c.connect(*impostor.out_addr)
    plain = sockets()
    try:
        assert plain.connect(*a.out_addr) is None, "refused by its handshake: silent, as in py2p"
    except ConnectionError:
        pass  # or refused at the TLS layer
    wait_for("no plaintext peer on a TLS node", lambda: plain.id not in a.routing_table)


def test_every_public_name_is_documented():
    import inspect

    from rs2p import _rs2p

    missing = []
    for mod in (base, mesh, sync, flags, _rs2p, rs2p):
        assert mod.__doc__, mod
        for name in getattr(mod, "__all__", [n for n in dir(mod) if not n.startswith("_")]):
            obj = getattr(mod, name)
            if inspect.ismodule(obj) or not (inspect.isclass(obj) or callable(obj)):
                continue
            if not obj.__doc__:
                missing.append(f"{mod.__name__}.{name}")
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    public = not attr.startswith("_") or attr in ("__getitem__", "__setitem__", "__delitem__", "__len__", "__iter__", "__contains__")
                    if public and (callable(member) or isinstance(member, property)) and not member.__doc__:
                        missing.append(f"{mod.__name__}.{name}.{attr}")
    assert missing == []
