"""The one error type users see: a message the CLI prints as a single line."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager


class SvdtoolError(Exception):
    """A user-facing failure. The CLI prints ``message`` on one line and exits with ``exit_code``.

    ``exit_code`` is 2 for bad input or usage (the default) and 1 for a check that ran and failed, or for
    an output that could not be written for a reason other than the path the user chose.
    """

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class CheckFailed(SvdtoolError):
    """A check (``verify``, a tolerance) ran to completion and found values out of bounds."""

    exit_code = 1


class WriteFailed(SvdtoolError):
    """Writing an output failed for a reason outside the user's input: a full disk, an I/O error."""

    exit_code = 1


#: errno values that point at the path the user chose (exit 2); any other OSError while writing exits 1.
_PATH_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EACCES", "EPERM", "EROFS", "ENOTDIR", "EISDIR", "ENOENT", "ENAMETOOLONG", "EEXIST", "ELOOP")
    if hasattr(errno, name)
)
_ADVICE = {
    errno.ENOSPC: "free some space, or choose another --out on a larger disk",
    errno.EIO: "the disk reported an error: check it, or choose another --out",
    errno.EACCES: "choose an --out you may write to",
    errno.EPERM: "choose an --out you may write to",
    errno.EROFS: "the file system is read-only: choose another --out",
}
if hasattr(errno, "EDQUOT"):
    _ADVICE[errno.EDQUOT] = "your disk quota is used up: free some space, or choose another --out"


def write_failure(exc: OSError, path: str | os.PathLike[str]) -> SvdtoolError:
    """The one-line error for an ``OSError`` raised while writing ``path`` (exit 2 for the user's path, else 1)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    advice = _ADVICE.get(exc.errno or 0)
    cls = SvdtoolError if exc.errno in _PATH_ERRNOS else WriteFailed
    return cls(f"cannot write {os.fspath(path)}: {reason}", hint=advice)


@contextmanager
def writing(out: str | os.PathLike[str], staging: str | os.PathLike[str] | None = None) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into :func:`write_failure`, naming the file that failed.

    Paths inside ``staging`` (the temporary folder of ``out``) are shown as they will be named in ``out``.
    """
    try:
        yield
    except OSError as exc:
        raise write_failure(exc, _shown(exc, out, staging)) from None


def _shown(exc: OSError, out: str | os.PathLike[str], staging: str | os.PathLike[str] | None) -> str:
    failed = exc.filename2 if exc.filename2 is not None and exc.filename is None else exc.filename
    if failed is None:
        return os.fspath(out)
    failed = os.fsdecode(failed) if isinstance(failed, bytes) else str(failed)
    if staging is not None:
        root = os.fspath(staging)
        if failed == root or failed.startswith(root + os.sep):
            return os.path.join(os.fspath(out), os.path.relpath(failed, root)).removesuffix(os.sep + ".")
    return failed
