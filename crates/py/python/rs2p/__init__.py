"""rs2p: py2p's peer-to-peer API, backed by the rs2p core (Rust).

``from rs2p import mesh`` is a drop-in for ``from py2p import mesh`` (and
likewise ``sync``, ``base``, ``flags``): the same classes, methods, events
and errors, speaking py2p 0.7's wire protocol, so rs2p and py2p nodes join
one network.
"""

from . import base, flags, mesh, sync
from ._rs2p import __version__

__all__ = ["base", "flags", "mesh", "sync", "__version__"]
