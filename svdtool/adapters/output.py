"""An output folder that appears complete or not at all, and the small files copied beside the weights.

Everything is written into a temporary folder beside DIR (``.DIR.tmp-PID-XXXX``, same filesystem) and
renamed onto DIR at the end. A run that fails or is interrupted removes its temporary folder; a
killed one (SIGKILL, a power cut) leaves it behind, never a partial DIR, and the next run to the same
DIR reports and removes it (unless the process named in it is still running). Any ``OSError`` while
writing becomes one line naming the file (:func:`svdtool.errors.writing`).
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from svdtool.errors import SvdtoolError, WriteFailed, write_failure, writing
from svdtool.interrupts import deferred

#: Files copied from the source checkpoint: config, tokenizer, chat template, remote code, licenses.
AUX_PATTERNS = (
    "*.json",
    "*.txt",
    "*.model",
    "*.tiktoken",
    "*.jinja",
    "*.py",
    "tokenizer*",
    "LICENSE*",
    "NOTICE*",
    "USE_POLICY*",
)
#: … except these, which describe weights svdtool rewrites or are not part of a base model.
AUX_EXCLUDE = ("*.index.json", "adapter_config.json", "svdtool.json")


def is_aux(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in AUX_PATTERNS) and not any(
        fnmatch.fnmatch(name, p) for p in AUX_EXCLUDE
    )


def copy_aux_files(src: Path, dst: Path) -> list[str]:
    """Copy the top-level config/tokenizer/license files of ``src`` into ``dst``; returns their names."""
    copied = []
    for path in sorted(src.iterdir()):
        if path.is_file() and is_aux(path.name):
            shutil.copyfile(path, dst / path.name)
            copied.append(path.name)
    return copied


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty DIR (or a file) unless ``overwrite``."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        if not overwrite:
            raise SvdtoolError(f"{out} exists and is not a folder; pass --overwrite to replace it")
        return
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SvdtoolError(f"{out} exists and is not empty; pass --overwrite to replace it")


@contextmanager
def staged_folder(out: Path, overwrite: bool, notify: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out``; on success rename it onto ``out``.

    Stale temporary folders of ``out`` from killed runs are removed first (each one reported to ``notify``).
    """
    check_target(out, overwrite)
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        for note in remove_stale(out):
            if notify is not None:
                notify(note)
        try:
            with deferred():  # an interrupt must not fall between creating the folder and knowing its name
                tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
        except OSError as exc:  # named after OUT: the staging folder never existed
            raise write_failure(exc, out) from None
    try:
        with writing(out, tmp):
            yield tmp
            tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary model folder
            with deferred():  # the old DIR is never left aside by an interrupt
                publish(tmp, out, overwrite)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_STAGING_PID = re.compile(r"\.tmp-(\d+)-")


def remove_stale(out: Path) -> list[str]:
    """Remove the ``.OUT.tmp-*`` folders that killed runs left beside ``out``; returns what was done.

    A folder named after a process that is still running belongs to a run in progress and is kept.
    """
    notes = []
    for path in sorted(out.parent.glob(f".{glob.escape(out.name)}.tmp-*")):
        if not path.is_dir() or path.is_symlink():
            continue
        m = _STAGING_PID.search(path.name[len(out.name) + 1 :])
        pid = int(m.group(1)) if m else None
        if pid is not None and pid != os.getpid() and _alive(pid):
            notes.append(f"{path} belongs to a running svdtool (pid {pid}) writing {out}; left alone")
            continue
        shutil.rmtree(path, ignore_errors=True)
        notes.append(f"removed {path}, left behind by an interrupted run")
    return notes


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def ensure_space(out: Path, needed: int) -> None:
    """Refuse, before anything is written, when the file system of ``out`` has less than ``needed`` bytes free."""
    probe = out.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        st = os.statvfs(probe)
    except (OSError, AttributeError):  # no statvfs (Windows) or an unreadable mount: let the writes tell
        return
    free = st.f_bavail * st.f_frsize
    if free < needed:
        raise WriteFailed(
            f"not enough free space for {out}: it needs {_size(needed)}, {probe} has {_size(free)} free",
            hint="free some space, or choose another --out on a larger disk",
        )


def _size(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} bytes"


def publish(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename ``tmp`` onto ``out``. An old ``out`` (with ``overwrite``) is moved aside first, then deleted;
    if the final rename fails, it is moved back."""
    check_target(out, overwrite)  # again: something may have appeared while we worked
    old: Path | None = None
    if out.is_symlink() or out.is_file():
        out.unlink()
    elif out.is_dir():
        if any(out.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "previous")
        else:
            out.rmdir()
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old / "previous", out)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
