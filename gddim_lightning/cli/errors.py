"""Which exceptions the CLI reports in one sentence, matched by type and origin, never by message text.

* `own_error`: jsonargparse wraps a constructor's own ``ValueError``/``TypeError`` (a wrong channel
  count, an impossible sampler setting) in plain ``ValueError``s of its own ("Does not validate
  against any of the Union subtypes ..."); the constructor's error is the first exception of the
  chain that jsonargparse's code did not raise.
* `DISK_ERRORS`: ``OSError`` numbers that are faults of the disk, not of the program.
"""

from __future__ import annotations

import errno
import types

__all__ = ["DISK_ERRORS", "own_error", "raised_in"]

#: errors of the disk rather than of the program: reported in one sentence, keeping the last checkpoint
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


def raised_in(err: BaseException, package: str) -> bool:
    """Whether the innermost frame of ``err``'s traceback (where it was raised) is code of ``package``."""
    tb: types.TracebackType | None = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    return module == package or module.startswith(package + ".")


def own_error(err: BaseException) -> BaseException:
    """The first exception in ``err``'s cause chain not raised by jsonargparse (``err`` itself if it
    was not, or if every exception of the chain was)."""
    seen = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if not raised_in(cur, "jsonargparse"):
            return cur
        cur = cur.__cause__ or cur.__context__
    return err
