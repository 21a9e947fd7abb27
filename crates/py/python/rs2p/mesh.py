"""py2p's mesh socket (``py2p.mesh``), backed by rs2p: a self-organising
mesh of TCP peers that floods broadcasts, whispers to direct peers and
routes replies to peers it is not connected to.

Moving a py2p program to rs2p is one line: ``from rs2p import mesh`` for
``from py2p import mesh``.
"""

import time
from typing import Any, Iterator, List, Optional, Tuple, Union

from . import flags
from .base import _UNSET, BaseConnection, BaseSocket, Message, Protocol, _subflag

__all__ = ["MeshSocket", "MeshConnection", "Protocol", "Message", "flags", "max_outgoing", "default_protocol"]

#: Outgoing connections each node keeps (py2p's rule); read when a socket
#: is made, so a program may change it first.
max_outgoing = 4
#: The default protocol of a mesh socket.
default_protocol = Protocol("mesh", "Plaintext")


class MeshConnection(BaseConnection):
    """A direct peer of a :class:`MeshSocket` (py2p's ``MeshConnection``)."""

    __slots__ = ()


class MeshSocket(BaseSocket):
    """A node of a mesh network (py2p's ``MeshSocket``).

    Added Events:

    - ``'connect'(conn)``: the routing table went from empty to one peer;
      ``conn`` is this socket.
    - ``'message'(conn)``: a message was queued for :meth:`recv`; ``conn``
      is this socket (the message is not passed: see
      :meth:`register_handler`).

    rs2p additions (not in py2p): :meth:`messages`, :meth:`next_message`
    (asyncio), :meth:`flush`, :attr:`tls_fingerprint`, :meth:`counters`,
    and the ``tls_pins`` keyword (pinned TLS certificates).
    """

    _connection_type = MeshConnection

    def __init__(
        self,
        addr: str,
        port: int,
        prot: Protocol = default_protocol,
        out_addr: Optional[Tuple[str, int]] = None,
        debug_level: int = 0,
        *,
        tls_pins: Optional[List[bytes]] = None,
    ) -> None:
        """Initializes a mesh socket and binds it at once.

        Args:
            addr:        The address you wish to bind to (ie: "192.168.1.1")
            port:        The port you wish to bind to (ie: 44565); 0 picks a
                         free one
            prot:        The Protocol you wish to operate over, defined by a
                         :class:`Protocol` object
            out_addr:    Your outward facing address. Only needed if you're
                         connecting over the internet. If you use '0.0.0.0'
                         for the addr argument, this will automatically be
                         set to your LAN address.
            debug_level: The verbosity you want this socket to use when
                         printing event data
            tls_pins:    (rs2p) with ``'SSL'``: accept only peers whose
                         certificate has one of these sha256 fingerprints

        Raises:
            OSError: The address you wanted could not be bound, or is
                     otherwise used (``socket.error``)
        """
        self._start(addr, port, prot, out_addr, debug_level, False, True, tls_pins, prot.subnet, max_outgoing)

    def connect(self, addr: str, port: int, id: Optional[bytes] = None, conn_type: Any = MeshConnection) -> Optional[bool]:
        """Connects you to a specific node in the overall network; peer
        exchange then connects you to the rest. Returns once the handshake is
        done. If you connect to the wrong subnet, the failure is silent (as in
        py2p): check the truthiness of :attr:`routing_table`.

        Args:
            addr: A string address
            port: A positive, integral port
            id:   A string-like object which represents the expected ID of
                  this node

        Returns:
            ``False`` if already connected (or it is this node's own
            address), else ``None``

        Raises:
            OSError: if no connection could be made (refused, unreachable,
                     timed out)
        """
        if self._closed:
            raise RuntimeError("The socket is closed")
        if isinstance(id, str):
            id = id.encode()
        if (addr, port) == tuple(self.out_addr) or (id is not None and id in self.routing_table):
            return False
        got = self._node.connect(addr, int(port), id)
        if got is None:
            self.__print__("Connection to {}:{} refused by its handshake (another network?)".format(addr, port), level=1)
        return None

    def disconnect(self, handler: BaseConnection) -> None:
        """Closes a given connection, and removes it from your routing tables.

        Args:
            handler: the connection you would like to close
        """
        if handler.id is not None:
            self._node.disconnect(handler.id)

    def request_peers(self) -> None:
        """Requests your peers' routing tables"""
        self._node.request_peers()

    def send(self, *args: Any, **kargs: Any) -> None:
        """This sends a message to all of your peers. If you use default
        values it will send it to everyone on the network.

        Args:
            *args:   A list of objects you want your peers to receive
            **kargs: There are two keywords available:
            flag:    the message type (packet 0 of the header):
                     ``flags.broadcast`` (default, the whole network) or
                     ``flags.whisper`` (your direct peers only)
            type:    the sub-flag, which the other end sees as
                     ``msg.packets[0]`` (default ``flags.broadcast``)

        Raises:
            TypeError: If any of the arguments are not serializable: they
                       must be bool, float, int (if ``2**64 > x >= -2**63``),
                       str, bytes, tuple, list, dict or None
            ValueError: for a message type other than broadcast or whisper,
                        or a message larger than the frame limit
        """
        send_type = _subflag(kargs.pop("type", flags.broadcast))
        main_flag = _subflag(kargs.pop("flag", flags.broadcast))
        if kargs:
            raise TypeError("unexpected keyword arguments: {}".format(sorted(kargs)))
        if self._closed:
            raise RuntimeError("The socket is closed")
        if main_flag == flags.broadcast:
            self._node.broadcast(list(args), send_type)
        elif main_flag == flags.whisper:
            for pid, _, _ in self._node.peers():
                try:
                    self._node.whisper(pid, send_type, list(args))
                except ConnectionError:
                    pass  # gone meanwhile
        else:
            raise ValueError("the message type must be flags.broadcast or flags.whisper")

    def recv(self, quantity: int = _UNSET) -> Union[None, Message, List[Message]]:
        """This function has two behaviors depending on whether quantity is
        left as default.

        If quantity is given, it will return a list of :class:`Message`
        objects up to length quantity.

        If quantity is left alone, it will return either a single
        :class:`Message` object, or ``None``.

        Args:
            quantity: The maximum number of messages you would like to pull

        Returns:
            A list of messages, an empty list, a single message, or ``None``
        """
        n = 1 if quantity is _UNSET else int(quantity)
        got = self._take(n)
        if quantity is _UNSET:
            return got[0] if got else None
        return got

    def _take(self, n: int) -> List[Message]:
        out: List[Message] = []
        with self._arrived:
            while self._queue and len(out) < n:
                out.append(self._queue.popleft())
        # Without handlers or 'message' listeners, messages stay in the node
        # until asked for (the dispatcher leaves them there).
        if len(out) < n and not self._wants_messages() and not self._closed:
            for raw in self._node.take(n - len(out)):
                if raw.subflag in (flags.whisper, flags.broadcast):
                    out.append(Message(raw, self))
                else:
                    self._on_message(raw)
        return out

    # ----- rs2p additions ----------------------------------------------------

    def _wait_one(self, timeout: Optional[float]) -> Optional[Message]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._closed:
            got = self._take(1)
            if got:
                return got[0]
            left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if left <= 0:
                return None
            if self._wants_messages():
                with self._arrived:
                    if not self._queue:
                        self._arrived.wait(left)
            else:
                raws, _ = self._node.poll(1, left, True)
                for raw in raws:
                    if raw.subflag in (flags.whisper, flags.broadcast):
                        return Message(raw, self)
                    self._on_message(raw)
        got = self._take(1)
        return got[0] if got else None

    def messages(self, timeout: Optional[float] = None) -> Iterator[Message]:
        """(rs2p) Yields messages as they arrive, until none came for
        ``timeout`` seconds (``None``: until the socket closes)::

            for msg in sock.messages(timeout=5):
                print(msg.sender, msg.packets)
        """
        while True:
            msg = self._wait_one(timeout)
            if msg is None:
                return
            yield msg

    async def next_message(self, timeout: Optional[float] = None) -> Optional[Message]:
        """(rs2p) Awaits the next message (``None`` after ``timeout`` seconds
        or once the socket is closed), without blocking the event loop."""
        import asyncio

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._wait_one, timeout)

    def flush(self) -> None:
        """(rs2p) Waits until every message sent so far has been handed to the
        node (sends are pipelined)."""
        self._node.flush()

    @property
    def tls_fingerprint(self) -> Optional[bytes]:
        """(rs2p) The sha256 fingerprint of this node's TLS certificate, for
        peers to pin, if the protocol is ``'SSL'``."""
        return self._node.tls_fingerprint

    def counters(self) -> dict:
        """(rs2p) The node's counters: peers, connections, delivered,
        duplicates, relayed, dropped messages and frames, recent errors."""
        return self._node.status()

