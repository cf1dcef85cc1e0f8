"""Stopping a sweep cleanly on Ctrl-C (SIGINT) or SIGTERM.

Inside ``graceful()`` the first signal only asks the sweep to stop (``stop_requested()`` gives its
number): the row in flight is measured and written, then the sweep calls ``finish``, which says
"interrupted: N rows kept, --resume continues" and exits 130 (SIGINT) or 143 (SIGTERM). A second
signal stops at once (``KeyboardInterrupt``; the row in flight is lost, the file keeps only whole
rows). ``main()`` returns the exit code; ``take_reported()`` tells it the line was already said.
"""
from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from typing import Iterator, NoReturn

import typer

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}     # 128 + the signal's number

_requested: int | None = None
_reported = False


def stop_requested() -> int | None:
    """The signal that asked the sweep to stop, or None."""
    return _requested


def _handler(signum, frame) -> None:
    global _requested
    if _requested is not None:
        raise KeyboardInterrupt
    _requested = signum
    # os.write, not print: a handler may run in the middle of another write to stderr
    os.write(2, b"\nstopping after the row in flight (again: stop at once)\n")


@contextmanager
def graceful() -> Iterator[None]:
    """Install the handlers for the duration of a sweep (outside the main thread, where signals
    cannot be handled, it installs none) and restore the previous ones after."""
    global _requested
    _requested = None
    try:
        previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    except ValueError:               # not the main thread
        previous = {}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _requested = None


def exit_interrupted(message: str, signum: int) -> NoReturn:
    """Say ``message`` (one line on stderr) and exit with the signal's code (130 / 143)."""
    global _reported
    from rich.markup import escape

    from .options import console

    console.print(f"[yellow]interrupted[/]: {escape(message)}", highlight=False, soft_wrap=True)
    _reported = True
    raise typer.Exit(EXIT_CODES.get(signum, 130))


def finish(rows_kept: int, signum: int) -> NoReturn:
    """The end of a sweep stopped by ``signum``: "interrupted: N rows kept, --resume continues"."""
    exit_interrupted(f"{rows_kept} row{'s' if rows_kept != 1 else ''} kept, --resume continues", signum)


def take_reported() -> bool:
    """Whether an interrupted command already said so (cleared by asking)."""
    global _reported
    was, _reported = _reported, False
    return was
