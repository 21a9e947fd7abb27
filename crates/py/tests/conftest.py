"""Shared helpers for the rs2p package's tests: sockets on free loopback
ports, closed after each test, and bounded waits."""

import time
from typing import Callable, List

import pytest

from rs2p import mesh, sync


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Polls ``cond`` until it holds; fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for: " + what)
        time.sleep(0.01)


@pytest.fixture
def sockets():
    """Makes sockets on free loopback ports; closes them after the test."""
    made: List[mesh.MeshSocket] = []

    def make(kind: str = "mesh", **kwargs):
        cls = {"mesh": mesh.MeshSocket, "sync": sync.SyncSocket}[kind]
        s = cls("127.0.0.1", 0, **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        try:
            s.close()
        except RuntimeError:
            pass


def link(a, b) -> None:
    """``b`` dials ``a``; returns once both see each other."""
    b.connect(*a.out_addr)
    wait_for("both ends linked", lambda: a.id in b.routing_table and b.id in a.routing_table)
