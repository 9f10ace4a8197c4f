"""Warnings that point at the user's line, not at the package's internals."""

from __future__ import annotations

import inspect
import os
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` with the stack level of the first caller outside this package, so the warning
    names the user's script (or the library that called in, e.g. Lightning) instead of a line here."""
    frame = inspect.currentframe()
    level = 2  # stacklevel 2 = the caller of warn_user
    frame = frame.f_back if frame is not None else None  # the package function that warns
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)


def renamed(owner: str, name: str, value, old_name: str, old_value, default):
    """The value of keyword ``name`` that replaced ``old_name``: ``value``, or the deprecated ``old_value``
    with a FutureWarning, or ``default`` when neither is given. A ``value`` other than ``default`` (or
    ``None``) must agree with ``old_value``."""
    if old_value is None:
        return default if value is None else value
    warn_user(f"{owner}({old_name}=...) is deprecated: it is now called {name} (the same setting). "
              f"Use {name}={old_value!r}.", FutureWarning)
    if value is not None and value != default and value != old_value:
        raise ValueError(f"{owner}: {name}={value!r} and the deprecated {old_name}={old_value!r} disagree; give {name} only")
    return old_value
