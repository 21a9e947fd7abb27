"""A pyee-compatible event emitter (the API py2p's sockets inherit)."""

import threading
import warnings
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Set, Tuple

if TYPE_CHECKING:  # asyncio costs ~10 MB to import: only when a coroutine listener needs it
    import asyncio

Listener = Callable[..., Any]

#: ``CO_COROUTINE`` in a code object's flags: an ``async def`` function.
_CO_COROUTINE = 0x0080


def _is_coroutine_function(f: Listener) -> bool:
    code = getattr(getattr(f, "__func__", f), "__code__", None)
    return bool(code is not None and code.co_flags & _CO_COROUTINE)


def _registration_loop() -> "asyncio.AbstractEventLoop":
    """The event loop a coroutine listener registered now will run on:
    the running loop, else this thread's loop (``asyncio.get_event_loop()``,
    as pyee defaults to), created if the thread has none."""
    import asyncio

    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return asyncio.get_event_loop()
        except RuntimeError:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            return loop


class EventEmitter:
    """Registers listeners by event name and calls them on :meth:`emit`.

    The same API as ``pyee.EventEmitter``: :meth:`on` (also a decorator),
    :meth:`once`, :meth:`emit`, :meth:`listeners`, :meth:`remove_listener`,
    :meth:`remove_all_listeners`. A coroutine function is scheduled on the
    asyncio event loop of the thread that registered it, and runs there.
    """

    def __init__(self) -> None:
        self._ee_lock = threading.RLock()
        # event -> [(the function given, the function called, its loop)]
        self._ee_listeners: Dict[str, List[Tuple[Listener, Listener, Optional["asyncio.AbstractEventLoop"]]]] = {}

    def on(self, event: str, f: Optional[Listener] = None) -> Any:
        """Registers ``f`` for ``event``; without ``f``, a decorator that does."""
        if f is None:
            return lambda fn: self._add(event, fn, fn, once=False)
        return self._add(event, f, f, once=False)

    add_listener = on

    def once(self, event: str, f: Optional[Listener] = None) -> Any:
        """Like :meth:`on`, but the listener is removed after its first call."""
        if f is None:
            return lambda fn: self._add(event, fn, fn, once=True)
        return self._add(event, f, f, once=True)

    def _add(self, event: str, given: Listener, call: Listener, once: bool) -> Listener:
        loop = _registration_loop() if _is_coroutine_function(call) else None
        if once:
            original = call

            def call(*args: Any, **kwargs: Any) -> Any:  # noqa: F811 - wraps the original
                self.remove_listener(event, given)
                return original(*args, **kwargs)

            if loop is not None:

                async def call(*args: Any, **kwargs: Any) -> Any:  # noqa: F811
                    self.remove_listener(event, given)
                    return await original(*args, **kwargs)

        with self._ee_lock:
            self._ee_listeners.setdefault(event, []).append((given, call, loop))
        self._listener_added(event)
        return given

    def _listener_added(self, event: str) -> None:
        """Hook for subclasses: a listener for ``event`` was added."""

    def emit(self, event: str, *args: Any, **kwargs: Any) -> bool:
        """Calls every listener of ``event`` with the arguments; returns
        whether there was any. A coroutine listener is scheduled on its loop
        (fire and forget). An ``'error'`` event with no listener raises its
        argument."""
        with self._ee_lock:
            entries = list(self._ee_listeners.get(event, ()))
        if not entries and event == "error":
            if args and isinstance(args[0], BaseException):
                raise args[0]
            raise RuntimeError("Uncaught, unspecified 'error' event.")
        for _, call, loop in entries:
            if loop is None:
                call(*args, **kwargs)
                continue
            import asyncio

            coro = call(*args, **kwargs)
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                loop.create_task(coro)
            else:
                asyncio.run_coroutine_threadsafe(coro, loop)
        return bool(entries)

    def listeners(self, event: str) -> List[Listener]:
        """The functions registered for ``event``, in order."""
        with self._ee_lock:
            return [given for given, _, _ in self._ee_listeners.get(event, ())]

    def event_names(self) -> Set[str]:
        """The events that have listeners."""
        with self._ee_lock:
            return {e for e, v in self._ee_listeners.items() if v}

    def remove_listener(self, event: str, f: Listener) -> None:
        """Removes ``f`` from ``event`` (its first registration)."""
        with self._ee_lock:
            entries = self._ee_listeners.get(event, [])
            for i, (given, _, _) in enumerate(entries):
                if given is f:
                    del entries[i]
                    return

    def remove_all_listeners(self, event: Optional[str] = None) -> None:
        """Removes every listener of ``event``, or of every event."""
        with self._ee_lock:
            if event is None:
                self._ee_listeners.clear()
            else:
                self._ee_listeners.pop(event, None)
