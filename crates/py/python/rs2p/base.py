"""What every socket shares (``py2p.base``): :class:`Protocol`,
:class:`Message`, :class:`BaseConnection`, :class:`BaseSocket`, and the
:mod:`~rs2p.flags`.

A socket runs an rs2p node (in Rust, on the package's own threads). Python
callbacks (handlers and event listeners) run on a thread of the socket's
own, never on the node's: a slow or raising callback cannot stall the mesh,
and its exception lands in :attr:`BaseSocket.status`, as py2p records them.
"""

import atexit
import logging
import socket as _socket
import threading
import traceback
import weakref
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

from . import _rs2p, flags
from ._events import EventEmitter

__all__ = ["Protocol", "Message", "BaseConnection", "BaseSocket", "flags", "default_protocol"]

_log = logging.getLogger("rs2p")

#: Messages the dispatcher takes from the node per turn.
_DISPATCH_BATCH = 1024
#: How long the dispatcher waits for a message or an event per turn (s).
_DISPATCH_WAIT = 0.2


class Protocol(NamedTuple("_Protocol", [("subnet", str), ("encryption", str)])):
    """Defines service variables so that you can reject connections looking
    for a different service (py2p's ``Protocol``).

    Attributes:
        subnet:     The subnet flag this Protocol uses
        encryption: The encryption method this Protocol uses: ``'Plaintext'``
                    or ``'SSL'``
    """

    __slots__ = ()

    @property
    def id(self) -> bytes:
        """The SHA-256 based ID of the Protocol (base58, as py2p writes it)."""
        return _rs2p.protocol_id(self.subnet, self.encryption)


#: py2p's base default protocol.
default_protocol = Protocol("", "Plaintext")


def _b58encode_int(n: int) -> bytes:
    alphabet = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    if n == 0:
        return alphabet[0:1]
    out = bytearray()
    while n:
        n, r = divmod(n, 58)
        out.append(alphabet[r])
    return bytes(reversed(out))


class Message:
    """A message received from the network (py2p's ``Message``).

    Attributes:
        msg:    the underlying received message
        server: the socket it arrived at
    """

    __slots__ = ("msg", "server", "_packets")

    def __init__(self, msg: "_rs2p.RawMessage", server: "BaseSocket") -> None:
        self.msg = msg
        self.server = server
        self._packets: Optional[Tuple[Any, ...]] = None

    @property
    def time(self) -> int:
        """The time this Message was sent at (UNIX seconds, UTC)."""
        return self.msg.time

    @property
    def time_58(self) -> bytes:
        """The time this Message was sent at, in base58."""
        return _b58encode_int(self.msg.time)

    @property
    def sender(self) -> bytes:
        """The ID of this Message's sender."""
        return self.msg.sender

    @property
    def id(self) -> bytes:
        """The message id: the sha256 of its payload."""
        return self.msg.id

    @property
    def msg_type(self) -> int:
        """The message type: ``flags.broadcast`` or ``flags.whisper``."""
        return self.msg.msg_type

    @property
    def verified(self) -> bool:
        """Whether this Message is proven to come from :attr:`sender` (rs2p
        only; py2p has no such notion): a broadcast signed by its sender, or a
        whisper on the link its sender proved its id on. False for py2p
        nodes' messages."""
        return self.msg.verified

    @property
    def packets(self) -> Tuple[Any, ...]:
        """The payload: packet 0 is the sub-flag, then the sender's packets."""
        if self._packets is None:
            self._packets = self.msg.payload()
        return self._packets

    def __len__(self) -> int:
        """Bytes on the wire (length prefix included, uncompressed)."""
        return self.msg.wire_len

    def __repr__(self) -> str:
        packets = self.packets
        return "Message(type={}, packets={}, sender={})".format(packets[0], packets[1:], self.sender)

    def reply(self, *args: Any) -> None:
        """Replies to the sender: directly if connected, otherwise through the
        network (a route is found as py2p's protocol does, the sender's
        advertised address dialed, the reply delivered). The other end
        receives ``[flags.whisper, *args]``.

        Raises:
            TypeError: if an argument cannot be sent
        """
        self.msg.reply(list(args))


class BaseConnection:
    """A direct peer, as the routing table and handlers see it (py2p's
    ``BaseConnection``).

    Attributes:
        server:   the socket this connection belongs to
        id:       the peer's id (``None`` while its handshake is under way)
        addr:     the peer's advertised ``(host, port)``, if known
        outgoing: whether this node dialed the connection
    """

    __slots__ = ("server", "id", "addr", "outgoing")

    def __init__(
        self,
        server: "BaseSocket",
        id: Optional[bytes],
        addr: Optional[Tuple[str, int]] = None,
        outgoing: bool = False,
    ) -> None:
        self.server = server
        self.id = id
        self.addr = addr
        self.outgoing = outgoing

    @property
    def protocol(self) -> Protocol:
        """Returns server.protocol"""
        return self.server.protocol

    def send(self, msg_type: int, *args: Any, **kargs: Any) -> None:
        """Sends a message through this connection: ``msg_type`` is the
        message type (``flags.whisper`` here: a broadcast goes to the whole
        network, through :meth:`MeshSocket.send`), ``args[0]`` the
        sub-flag, the rest the packets.

        rs2p never forges a message: the ``id`` and ``time`` keywords py2p
        accepts must be this node's id and the current time if given.

        Raises:
            TypeError:  if an argument cannot be sent
            ValueError: for a message type other than whisper, or a forged
                        sender
            ConnectionError: if the peer is no longer connected
        """
        if kargs.get("id", self.server.id) != self.server.id:
            raise ValueError("rs2p does not send messages under another node's id")
        unknown = set(kargs) - {"id", "time"}
        if unknown:
            raise TypeError("unexpected keyword arguments: {}".format(sorted(unknown)))
        if self.id is None:
            raise ConnectionError("this connection has not completed its handshake")
        if msg_type != flags.whisper:
            raise ValueError("a connection sends whispers; broadcasts go to the whole network (MeshSocket.send)")
        if not args:
            raise ValueError("a message needs its sub-flag as the first argument")
        subflag = _subflag(args[0])
        self.server._node.whisper(self.id, subflag, list(args[1:]))

    def __repr__(self) -> str:
        return "<{} id={!r} addr={!r} outgoing={}>".format(type(self).__name__, self.id, self.addr, self.outgoing)


def _subflag(f: Any) -> int:
    if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < 2**64:
        raise TypeError("a flag is a non-negative int (rs2p sends py2p's integer flags only)")
    return f


def _key(key: Union[str, bytes, bytearray, memoryview]) -> bytes:
    """A key as py2p sanitises it: str as UTF-8 bytes."""
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise TypeError("a key is str or bytes, not {}".format(type(key).__name__))


def _lan_ip() -> str:
    """This host's LAN address, for sockets bound to ``0.0.0.0`` (py2p's
    rule). A UDP socket is connected, which sends nothing."""
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        s.connect(("10.255.255.255", 1))
        return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        s.close()


_UNSET: Any = object()
_live: "weakref.WeakSet[BaseSocket]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Closes every open socket at exit, so peers see a clean close."""
    for s in list(_live):
        try:
            s.close()
        except Exception:
            pass


class BaseSocket(EventEmitter):
    """The base class of the sockets (py2p's ``BaseSocket``): a running node,
    its handlers, its events and its receive queue.

    Attributes:
        protocol:    the :class:`Protocol` of the network
        debug_level: the verbosity of py2p's debug printing (rs2p logs
                     through :mod:`logging`, logger ``"rs2p"``)
        out_addr:    the ``(host, port)`` other nodes are told to dial
        id:          this node's id
    """

    def _start(
        self,
        addr: str,
        port: int,
        prot: Protocol,
        out_addr: Optional[Tuple[str, int]],
        debug_level: int,
        sync: bool,
        leasing: bool,
        tls_pins: Optional[List[bytes]],
        subnet: str,
        max_outgoing: int = 4,
    ) -> None:
        EventEmitter.__init__(self)
        if prot.encryption not in ("Plaintext", "SSL"):
            raise ValueError("unknown encryption {!r}: 'Plaintext' or 'SSL'".format(prot.encryption))
        self.protocol = prot
        self.debug_level = debug_level
        if out_addr:
            advertised: Optional[Tuple[str, int]] = (str(out_addr[0]), int(out_addr[1]))
        elif addr == "0.0.0.0":
            advertised = (_lan_ip(), port)
        else:
            advertised = (addr, port)
        if port == 0:
            advertised = None if not out_addr else advertised
        self._node = _rs2p.Node(
            addr,
            port,
            subnet,
            prot.encryption,
            out_addr=advertised,
            sync=sync,
            leasing=leasing,
            tls_pins=tls_pins,
            max_outgoing=max_outgoing,
        )
        self.out_addr: Tuple[str, int] = advertised or tuple(self._node.out_addr)  # type: ignore[assignment]
        self.id: bytes = self._node.id
        self._handlers: List[Callable[[Message, BaseConnection], Any]] = []
        self._queue: Deque[Message] = deque()
        self._arrived = threading.Condition()
        self._errors: List[str] = []
        self._closed = False
        self._close_lock = threading.Lock()
        self._subscribed = False
        _live.add(self)
        self._dispatcher = threading.Thread(
            target=_dispatch, args=(weakref.ref(self), self._node), name="rs2p-dispatch-{}".format(self.out_addr[1]),
            daemon=True,
        )
        self._dispatcher.start()

    # ----- callbacks, on the dispatcher thread --------------------------------

    def _record_error(self) -> None:
        """Keeps the current exception's traceback for :attr:`status`."""
        text = traceback.format_exc()
        _log.error("a callback of %r raised:\n%s", self, text)
        self._errors.append(text)
        del self._errors[:-32]

    def _wants_messages(self) -> bool:
        return bool(self._handlers) or bool(self.listeners("message"))

    def _on_message(self, raw: "_rs2p.RawMessage") -> None:
        msg = Message(raw, self)
        via = raw.via
        conn = self._connection_type(self, via if via is not None else raw.sender)
        for handler in list(self._handlers):
            try:
                if handler(msg, conn):
                    return
            except Exception:
                self._record_error()
                return
        self._enqueue(msg)

    def _enqueue(self, msg: Message) -> None:
        if msg.msg.subflag not in (flags.whisper, flags.broadcast):
            return  # protocol sub-flags go to handlers only, as in py2p
        with self._arrived:
            self._queue.append(msg)
            self._arrived.notify_all()
        try:
            self.emit("message", self)
        except Exception:
            self._record_error()

    def _on_event(self, ev: Tuple[Any, ...]) -> None:
        try:
            if ev[0] == "connect":
                self.emit("connect", self)
        except Exception:
            self._record_error()

    def _listener_added(self, event: str) -> None:
        if event in ("connect", "update", "delete") and not self._subscribed:
            self._subscribed = True
            self._node.subscribe()

    # ----- py2p's API ---------------------------------------------------------

    def register_handler(self, method: Callable[..., Any]) -> None:
        """Register a handler for incoming messages.

        Args:
            method: A function with two given arguments. Its signature
                    should be of the form ``handler(msg, handler)``, where msg
                    is a :class:`Message` object, and handler is a
                    :class:`BaseConnection` object (the peer it arrived
                    from). It should return ``True`` if it performed an
                    action, to reduce the number of handlers checked; the
                    message is then not queued for :meth:`recv`.

        Raises:
            ValueError: If the method signature doesn't parse correctly
        """
        import inspect

        args = inspect.signature(method)
        if len(args.parameters) != (3 if args.parameters.get("self") else 2):
            raise ValueError("This method must contain exactly two arguments (or three if first is self)")
        self._handlers.append(method)

    def handle_msg(self, msg: Message, conn: BaseConnection) -> Optional[bool]:
        """Runs the handler chain on ``msg``; ``True`` if one took it."""
        for handler in list(self._handlers):
            if handler(msg, conn):
                return True
        return None

    @property
    def status(self) -> Union[str, List[str]]:
        """The status of the socket: ``"Nominal"`` if all is going well, or a
        list of the unexpected errors (connections closed for misbehaviour,
        and tracebacks of callbacks that raised)."""
        errors = list(self._errors)
        if not self._closed:
            try:
                errors = list(self._node.status()["recent_errors"]) + errors
            except RuntimeError:
                pass
        return errors or "Nominal"

    @property
    def routing_table(self) -> Dict[bytes, BaseConnection]:
        """Every handshaken peer: id -> connection."""
        if self._closed:
            return {}
        return {
            pid: self._connection_type(self, pid, tuple(addr) if addr else None, outgoing)  # type: ignore[arg-type]
            for pid, addr, outgoing in self._node.peers()
        }

    _connection_type = BaseConnection

    @property
    def awaiting_ids(self) -> List[BaseConnection]:
        """Connections whose handshake is under way (no id yet)."""
        if self._closed:
            return []
        st = self._node.status()
        return [self._connection_type(self, None) for _ in range(max(0, st["connections"] - st["peers"]))]

    @property
    def outgoing(self) -> Iterator[bytes]:
        """IDs of outgoing connections"""
        return (c.id for c in self.routing_table.values() if c.outgoing)  # type: ignore[misc]

    @property
    def incoming(self) -> Iterator[bytes]:
        """IDs of incoming connections"""
        return (c.id for c in self.routing_table.values() if not c.outgoing)  # type: ignore[misc]

    def close(self) -> None:
        """If the socket is not closed, close the socket: every connection
        closes cleanly, the node stops.

        Raises:
            RuntimeError: The socket was already closed
        """
        with self._close_lock:
            if self._closed:
                raise RuntimeError("Already closed")
            self._closed = True
        try:
            self._node.close()
        except RuntimeError:
            pass
        if threading.current_thread() is not self._dispatcher:
            self._dispatcher.join(timeout=2)
        with self._arrived:
            self._arrived.notify_all()
        _live.discard(self)

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            try:
                self.close()
            except Exception:
                pass

    def __print__(self, *args: Any, **kargs: Any) -> None:
        """Prints if ``level`` (a keyword, default 0) is at most
        :attr:`debug_level` (py2p's debug printing)."""
        if kargs.get("level", 0) <= self.debug_level:
            print(self.out_addr[1], *args)


def _dispatch(ref: "weakref.ref[BaseSocket]", node: "_rs2p.Node") -> None:
    """The socket's own thread: takes messages (when handlers or 'message'
    listeners want them) and events from the node and runs the callbacks.
    Ends when the socket is closed or garbage."""
    while True:
        sock = ref()
        if sock is None or sock._closed:
            return
        wants = sock._wants_messages()
        del sock  # hold no reference while waiting
        try:
            msgs, events = node.poll(_DISPATCH_BATCH, _DISPATCH_WAIT, wants)
        except RuntimeError:
            return  # the node stopped
        if not msgs and not events:
            continue
        sock = ref()
        if sock is None:
            return
        for ev in events:
            sock._on_event(ev)
        for raw in msgs:
            sock._on_message(raw)
        del sock

