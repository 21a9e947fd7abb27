"""py2p's synced dictionary (``py2p.sync``), backed by rs2p: a dictionary
replicated across every node of the mesh.

Between rs2p nodes the dictionary is strongly eventually consistent (every
write has a version, deletes are remembered, anti-entropy repairs what a node
missed); py2p nodes in the same network keep py2p's rules. Keys are bytes
(a ``str`` key is its UTF-8 bytes, as in py2p).
"""

from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

from . import flags
from .base import Protocol, _key
from . import mesh as _mesh
from .mesh import MeshSocket

__all__ = ["SyncSocket", "metatuple", "Protocol", "flags", "default_protocol"]

#: The default protocol of a sync socket (the network's subnet gets ``"1"``
#: with leasing, ``"0"`` without, as in py2p).
default_protocol = Protocol("sync", "Plaintext")

Key = Union[str, bytes]


class metatuple(NamedTuple("meta", [("owner", bytes), ("timestamp", int)])):
    """This class is used to store metadata for a particular key: who wrote
    it last, and when (UNIX seconds)."""

    __slots__ = ()


class SyncSocket(MeshSocket):
    """A node holding a replica of the network's dictionary (py2p's
    ``SyncSocket``). It extends :class:`~rs2p.mesh.MeshSocket`, so it can also
    be used as an alert network.

    With leasing (the default), a key written by one node cannot be written
    by another for an hour after that node's last write.

    Added Events:

    - ``'update'(conn, key, data, new_meta)``: a key got a new value
      (:class:`metatuple` ``new_meta``: who and when).
    - ``'delete'(conn, key)``: a key was deleted.
    """

    def __init__(
        self,
        addr: str,
        port: int,
        prot: Protocol = default_protocol,
        out_addr: Optional[Tuple[str, int]] = None,
        debug_level: int = 0,
        leasing: bool = True,
        *,
        tls_pins: Optional[List[bytes]] = None,
    ) -> None:
        """Initializes a sync socket and binds it at once.

        Args:
            addr:        The address you wish to bind to
            port:        The port you wish to bind to
            prot:        The Protocol you wish to operate over (its subnet
                         gets ``"1"`` with leasing, ``"0"`` without)
            out_addr:    Your outward facing address
            debug_level: The verbosity of debug printing
            leasing:     py2p's leasing system (default on)
            tls_pins:    (rs2p) pinned certificate fingerprints with ``'SSL'``

        Raises:
            OSError: The address you wanted could not be bound
        """
        protocol_used = Protocol(prot[0] + str(int(leasing)), prot[1])
        self._start(
            addr, port, protocol_used, out_addr, debug_level, True, leasing, tls_pins, prot[0], _mesh.max_outgoing
        )
        self._leasing = leasing

    def _on_event(self, ev: Tuple[Any, ...]) -> None:
        try:
            if ev[0] == "update":
                _, key, value, owner, ts = ev
                self.emit("update", self, key, value, metatuple(owner, ts))
            elif ev[0] == "delete":
                self.emit("delete", self, ev[1])
            else:
                super()._on_event(ev)
        except Exception:
            self._record_error()

    def __setitem__(self, key: Key, data: Any) -> None:
        """Updates the value at a given key (``None`` deletes it).

        Raises:
            KeyError:  If you do not have the lease for this slot (or, for
                       ``None``, the key holds nothing). Lease is given
                       automatically for one hour if the slot is open.
            TypeError: If your key is not str or bytes, or your value is not
                       serializable
        """
        k = _key(key)
        if data is None:
            self._node.delete(k)
        else:
            self._node.set(k, data)

    def set(self, key: Key, data: Any) -> None:
        """Updates the value at a given key (see :meth:`__setitem__`)."""
        self.__setitem__(key, data)

    def update(self, update_dict: Dict[Key, Any]) -> None:
        """Equivalent to :meth:`dict.update`: calls :meth:`__setitem__` for each
        pair, in order (stops at the first refused key).

        Raises:
            KeyError: If you do not have the lease for a slot
        """
        for key, value in update_dict.items():
            self.__setitem__(key, value)

    def __getitem__(self, key: Key) -> Any:
        """Looks up the value at a given key.

        Raises:
            KeyError: If there is no value assigned at that key
        """
        got = self._node.get(_key(key))
        if got is None:
            raise KeyError(key)
        return got[0]

    def get(self, key: Key, ifError: Any = None) -> Any:
        """The value at a given key, or ``ifError`` if there is none."""
        got = self._node.get(_key(key))
        return ifError if got is None else got[0]

    def getmeta(self, key: Key) -> Optional[metatuple]:
        """(rs2p) Who wrote the key last and when, or ``None``."""
        got = self._node.get(_key(key))
        return None if got is None else metatuple(got[1], got[2])

    def __delitem__(self, key: Key) -> None:
        """Deletes a key.

        Raises:
            KeyError: if it holds nothing, or another node holds its lease
        """
        self._node.delete(_key(key))

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` holds a value."""
        if not isinstance(key, (str, bytes, bytearray, memoryview)):
            return False
        return self._node.get(_key(key)) is not None

    def __len__(self) -> int:
        """Number of keys holding a value."""
        return self._node.len()

    def _snapshot(self) -> List[Tuple[bytes, Any, bytes, int]]:
        return self._node.items()

    def keys(self) -> Iterator[bytes]:
        """An iterator of the dictionary's keys (bytes)."""
        return iter([k for k, _, _, _ in self._snapshot()])

    def __iter__(self) -> Iterator[bytes]:
        """Iterates the keys (see :meth:`keys`)."""
        return self.keys()

    def values(self) -> Iterator[Any]:
        """An iterator of the dictionary's values."""
        return iter([v for _, v, _, _ in self._snapshot()])

    def items(self) -> Iterator[Tuple[bytes, Any]]:
        """An iterator of the dictionary's ``(key, value)`` pairs."""
        return iter([(k, v) for k, v, _, _ in self._snapshot()])

    def pop(self, key: Key, *args: Any) -> Any:
        """Returns a value, with the side effect of deleting that association.

        Args:
            key:     The key you wish to look up
            ifError: The value you wish to return if there is none (default:
                     raise)

        Raises:
            KeyError: If the key does not have an associated value (and no
                      ``ifError`` was given), or is leased to another node
        """
        if len(args) > 1:
            raise TypeError("pop expected at most 2 arguments, got {}".format(1 + len(args)))
        try:
            return self._node.pop(_key(key))[1]
        except KeyError:
            if args and self._node.get(_key(key)) is None:
                return args[0]
            raise

    def popitem(self) -> Tuple[bytes, Any]:
        """Returns an arbitrary association, deleting it.

        Raises:
            KeyError: if the dictionary is empty
        """
        return self._node.pop(None)

    def copy(self) -> Dict[bytes, Any]:
        """A :class:`dict` copy of this synchronized hash table."""
        return {k: v for k, v, _, _ in self._snapshot()}

    @property
    def data(self) -> Dict[bytes, Any]:
        """A snapshot of the dictionary (py2p exposes its own dict here)."""
        return self.copy()

    @property
    def metadata(self) -> Dict[bytes, metatuple]:
        """A snapshot of every key's :class:`metatuple`."""
        return {k: metatuple(o, t) for k, _, o, t in self._snapshot()}

    def apply_delta(self, key: Key, delta: Dict[Any, Any]) -> None:
        """Updates a stored mapping with the given delta (creating it): the
        graceful way to change parts of a value that several nodes write.

        Raises:
            TypeError: If the key stores something other than a mapping, or
                       ``delta`` is not one
            KeyError:  If another node holds the key's lease
        """
        if not isinstance(delta, dict):
            raise TypeError("a delta is a dict")
        self._node.delta(_key(key), delta)
