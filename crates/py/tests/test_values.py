"""Values keep their msgpack types both ways, as py2p's u-msgpack does:
through broadcasts and through the synced dictionary."""

import pytest

from rs2p import flags
from conftest import link, wait_for

VALUES = [
    b"bytes stay bytes",
    "str stays str",
    "unicode 成功 ✓",
    b"",
    "",
    0,
    1,
    -1,
    -(2**63),
    2**63 - 1,
    2**64 - 1,
    1.5,
    -0.0,
    float("inf"),
    None,
    True,
    False,
    [],
    {},
    [1, [2, [3, []]], {"k": [b"v"]}],
    {"str key": 1, b"bytes key": 2, 3: "int key", None: [None]},
    {"nested": {"deeper": {"deepest": b"x"}}},
]


def test_broadcast_round_trips_every_type(sockets):
    a, b = sockets(), sockets()
    link(a, b)
    a.send(*VALUES)
    msg = next(b.messages(timeout=5))
    assert msg.packets == (flags.broadcast, *VALUES)
    for sent, got in zip(VALUES, msg.packets[1:]):
        assert type(got) is type(sent), (sent, got)


def test_tuples_arrive_as_lists(sockets):
    a, b = sockets(), sockets()
    link(a, b)
    a.send((1, (2, 3)))
    assert next(b.messages(timeout=5)).packets == (0, [1, [2, 3]])


def test_dictionary_round_trips_every_type(sockets):
    a, b = sockets("sync"), sockets("sync")
    link(a, b)
    for i, v in enumerate(VALUES):
        if v is None:
            continue  # None deletes
        a[f"k{i}"] = v
    wait_for("all keys replicated", lambda: len(b) == len(VALUES) - 1)
    for i, v in enumerate(VALUES):
        if v is None:
            assert b.get(f"k{i}", "absent") == "absent"
            continue
        got = b[f"k{i}"]
        assert got == v and type(got) is type(v), (v, got)


def test_out_of_range_ints_are_refused(sockets):
    a = sockets("sync")
    for bad in (2**64, -(2**63) - 1):
        with pytest.raises(TypeError):
            a["k"] = bad
        with pytest.raises(TypeError):
            a.send(bad)
