"""Errors every layer shares, and turning an exception into the one line a user sees.

This module imports nothing, so a command can catch these without importing (and so running the
checks of) the module that raises them."""
from __future__ import annotations


def first_line(e: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")[:300]


class SettingError(ValueError):
    """A setting that is not one (a bad ``YOCO_KERNEL_*`` variable, ``override`` or ``want``): one
    line, naming it."""


class Notice(UserWarning):
    """Something a user should know that is not an error (e.g. a model folder run by the
    transformers fallback instead of the native path): raised with ``warnings.warn(text, Notice)``;
    the CLI prints it as one line on stderr."""
