"""Ctrl-C that is never lost.

Python raises ``KeyboardInterrupt`` wherever the main thread is when SIGINT arrives.  Raised inside a
finalizer (``__del__`` during garbage collection; Amaranth's unused-elaboratable check has one) or under a
library's bare ``except:``, it is printed or swallowed and the run goes on.  :func:`install` makes SIGINT also
set a flag, and the link client's wait loop calls :func:`check`, which raises ``KeyboardInterrupt`` again if a
SIGINT was seen, so a long run always ends at Ctrl-C.
"""
import signal

_seen = False


def _on_sigint(signum, frame):
    global _seen
    _seen = True
    raise KeyboardInterrupt


def install() -> None:
    """Take SIGINT over from Python's default handler (left alone if someone else set one, or it is ignored)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)


def check() -> None:
    """Raise ``KeyboardInterrupt`` if a SIGINT arrived since :func:`install` (even one swallowed elsewhere)."""
    if _seen:
        raise KeyboardInterrupt
