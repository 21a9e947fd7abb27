"""A pytest plugin that runs py2p's own test modules against rs2p.

py2p 0.7.878 ships its tests inside the package (``py2p/test/``). This
plugin, loaded with ``-p py2p_as_rs2p``, makes the name ``py2p`` resolve to
rs2p before anything is collected: ``py2p.mesh``, ``py2p.sync``,
``py2p.base`` and ``py2p.flags`` are rs2p's modules, while ``py2p.test``
still finds the test files of the installed py2p package, which pytest then
runs unchanged. Nothing of py2p's code is imported or copied.
"""

import importlib.util
import os
import sys
import types

import rs2p
import rs2p.base
import rs2p.flags
import rs2p.mesh
import rs2p.sync

_spec = importlib.util.find_spec("py2p")  # locates the package, runs nothing
if _spec is None or _spec.origin is None:
    raise RuntimeError("py2p is not installed: its test modules are what this suite runs")
PY2P_DIR = os.path.dirname(_spec.origin)
TEST_DIR = os.path.join(PY2P_DIR, "test")

_pkg = types.ModuleType("py2p")
_pkg.__path__ = [PY2P_DIR]  # so that py2p.test.<module> is found on disk
_pkg.__file__ = _spec.origin
_test = types.ModuleType("py2p.test")
_test.__path__ = [TEST_DIR]
_test.__file__ = os.path.join(TEST_DIR, "__init__.py")
_pkg.test = _test
for _name in ("base", "flags", "mesh", "sync"):
    setattr(_pkg, _name, getattr(rs2p, _name))
    sys.modules["py2p." + _name] = getattr(rs2p, _name)
sys.modules["py2p"] = _pkg
sys.modules["py2p.test"] = _test


def pytest_configure(config):
    # py2p's tests mark themselves for pytest-ordering, which is not needed.
    config.addinivalue_line("markers", "run(order): py2p's ordering mark (unused)")


def pytest_report_header(config):
    return "py2p's test modules from {}, with py2p's modules mapped to rs2p {}".format(TEST_DIR, rs2p.__version__)


def pytest_collection_finish(session):
    """Every collected module must be py2p's file, running on rs2p."""
    files = {str(item.fspath) for item in session.items}
    assert files and all(f.startswith(TEST_DIR) for f in files), files
    for name in ("py2p.test.test_mesh", "py2p.test.test_sync"):
        module = sys.modules.get(name)
        if module is not None:
            assert module.__file__.startswith(TEST_DIR), module.__file__
            for attr in ("mesh", "sync", "flags"):
                if hasattr(module, attr):
                    assert getattr(module, attr) is getattr(rs2p, attr), (name, attr)
