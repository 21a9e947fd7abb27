"""Threads and the GIL: callbacks run on the socket's own thread, a slow or
raising callback stalls nothing, every method may be called from several
threads, a program exits promptly without close(), and Ctrl-C interrupts a
blocking wait."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

from rs2p import flags
from conftest import link, wait_for


def test_callbacks_run_on_the_sockets_own_thread(sockets):
    a, b = sockets(), sockets()
    where = []
    b.register_handler(lambda msg, handler: where.append(threading.current_thread().name))
    b.on("message", lambda sock: where.append(threading.current_thread().name))
    link(a, b)
    a.send(b"x")
    wait_for("both callbacks", lambda: len(where) == 2)
    assert all(n.startswith("rs2p-dispatch") for n in where), where
    assert threading.current_thread().name not in where


def test_a_slow_handler_does_not_stall_the_mesh(sockets):
    """b's handler sleeps; b still relays a's broadcasts to c at once."""
    a, b, c = sockets(), sockets(), sockets()
    link(b, a)
    link(b, c)
    b.register_handler(lambda msg, handler: time.sleep(3))
    time.sleep(0.2)
    for i in range(50):
        a.send(i)
    start = time.monotonic()
    got = []
    while len(got) < 50 and time.monotonic() - start < 10:
        got.extend(c.recv(50))
        time.sleep(0.01)
    assert len(got) == 50
    assert time.monotonic() - start < 2.5, "relayed while the handler slept"


def test_a_raising_handler_lands_in_status_and_messages_keep_coming(sockets):
    a, b = sockets(), sockets()

    def boom(msg, handler):
        if msg.packets[1] == b"boom":
            raise ValueError("handler failure")

    b.register_handler(boom)
    link(a, b)
    a.send(b"boom")
    wait_for("error recorded", lambda: b.status != "Nominal")
    assert any("ValueError: handler failure" in e for e in b.status)
    a.send(b"after")
    msg = next(b.messages(timeout=5))
    assert msg.packets == (flags.broadcast, b"after")


def test_methods_from_many_threads(sockets):
    a, b = sockets("sync", leasing=False), sockets("sync", leasing=False)
    link(a, b)
    errors = []

    def work(t):
        try:
            for i in range(200):
                a.send(t, i)
                a[f"t{t}-{i}"] = i
                a.get(f"t{t}-{i}")
                len(a.routing_table)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    wait_for("all writes replicated", lambda: len(b) == 800)
    got = []
    wait_for("all broadcasts", lambda: got.extend(b.recv(1000)) or len(got) == 800)
    # Each thread's broadcasts arrive in the order it sent them.
    for t in range(4):
        assert [m.packets[2] for m in got if m.packets[1] == t] == list(range(200))


def _run(code: str, **kwargs):
    env = dict(os.environ)
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


def test_a_program_that_never_closes_exits_promptly():
    p = _run(
        """
        from rs2p import mesh, sync
        a = mesh.MeshSocket('127.0.0.1', 0)
        b = sync.SyncSocket('127.0.0.1', 0)
        c = mesh.MeshSocket('127.0.0.1', 0)
        c.connect(*a.out_addr)
        b['k'] = 1
        print('done', flush=True)
        """
    )
    start = time.monotonic()
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert out.strip() == "done"
    assert time.monotonic() - start < 10


def test_ctrl_c_interrupts_a_blocking_wait():
    p = _run(
        """
        from rs2p import mesh
        a = mesh.MeshSocket('127.0.0.1', 0)
        print('waiting', flush=True)
        try:
            for msg in a.messages():
                pass
        except KeyboardInterrupt:
            print('interrupted', flush=True)
        """
    )
    assert p.stdout.readline().strip() == "waiting"
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=10)
    assert "interrupted" in out, err
    assert p.returncode == 0, err
