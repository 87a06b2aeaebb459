"""Writes that fail: every OSError while writing ends in one line with the path and the reason, exit 1 for
I/O (full disk, EIO) and 2 for the user's path (EACCES, EROFS), and leaves neither OUT nor a staging folder.

Faults are injected into the OS-level write calls svdtool makes (``os.open`` of new files, ``os.pwrite``,
``os.ftruncate``, file ``write``, ``shutil.copyfile``, ``os.replace``, ``os.mkdir``), at each call in turn.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_cli

_REAL = {
    "open": os.open,
    "pwrite": os.pwrite,
    "ftruncate": os.ftruncate,
    "fdopen": os.fdopen,
    "copyfile": shutil.copyfile,
    "replace": os.replace,
    "mkdir": os.mkdir,
}


class Faults:
    """Counts write calls under ``root`` (fd calls: any); the ``fail_at``-th one raises OSError(``code``)."""

    def __init__(self, root: Path, fail_at: int, code: int = errno.ENOSPC) -> None:
        self.root, self.fail_at, self.code, self.calls = str(root), fail_at, code, 0
        self.failed = ""  # the call that raised
        self._lock = threading.Lock()

    def hit(self, what: str, path: Any = None) -> None:
        if path is not None and not os.fspath(path).startswith(self.root):
            return  # another library's file (a compiler cache …)
        with self._lock:
            self.calls += 1
            fail = self.calls == self.fail_at
        if fail:
            self.failed = f"{what} {path}"
            raise OSError(self.code, os.strerror(self.code), *(() if path is None else (str(path),)))

    def install(self, mp: pytest.MonkeyPatch) -> None:
        def open_(path: Any, flags: int, *a: Any, **k: Any) -> int:
            if flags & os.O_CREAT:
                self.hit("open", path)
            return _REAL["open"](path, flags, *a, **k)

        def pwrite(fd: int, data: Any, offset: int) -> int:
            self.hit("pwrite")
            return _REAL["pwrite"](fd, data, offset)

        def ftruncate(fd: int, n: int) -> None:
            self.hit("ftruncate")
            _REAL["ftruncate"](fd, n)

        faults = self

        class File:
            def __init__(self, fh: Any) -> None:
                self.fh = fh

            def write(self, data: Any) -> int:
                faults.hit("write")
                return int(self.fh.write(data))

            def __enter__(self) -> File:
                return self

            def __exit__(self, *exc: object) -> None:
                self.fh.close()

            def __getattr__(self, name: str) -> Any:
                return getattr(self.fh, name)

        def fdopen(fd: int, mode: str = "r", *a: Any, **k: Any) -> Any:
            mine = "w" in mode and os.readlink(f"/proc/self/fd/{fd}").startswith(self.root)
            fh = _REAL["fdopen"](fd, mode, *a, **k)
            return File(fh) if mine else fh

        def copyfile(src: Any, dst: Any, **k: Any) -> Any:
            self.hit("copyfile", dst)
            return _REAL["copyfile"](src, dst, **k)

        def replace(src: Any, dst: Any, **k: Any) -> None:
            self.hit("replace", dst)
            _REAL["replace"](src, dst, **k)

        def mkdir(path: Any, *a: Any, **k: Any) -> None:
            if not os.path.exists(path):  # Path.mkdir(exist_ok=True) of an existing folder creates nothing
                self.hit("mkdir", path)
            _REAL["mkdir"](path, *a, **k)

        for name, fn in (("open", open_), ("pwrite", pwrite), ("ftruncate", ftruncate), ("fdopen", fdopen),
                         ("replace", replace), ("mkdir", mkdir)):  # fmt: skip
            mp.setattr(os, name, fn)
        mp.setattr(shutil, "copyfile", copyfile)


def _init_args(model: Path, out: Path) -> list[Any]:
    return ["init", model, "--method", "pissa", "-r", "2", "--targets", "q_proj,v_proj", "--out", out,
            "--device", "cpu"]  # fmt: skip


def _one_line(code: int, stdout: str, stderr: str, want_code: int) -> str:
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert code == want_code, stderr
    assert "Traceback" not in stderr and stdout == ""
    errors = [x for x in lines if x.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def _nothing_left(parent: Path) -> None:
    assert sorted(p.name for p in parent.iterdir()) == [], "left behind"


pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd")


def test_init_fails_cleanly_at_every_write_call(tiny_llama: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    parent = tmp_path / "outs"
    parent.mkdir()
    out = parent / "init"
    k = 0
    seen: set[str] = set()
    while True:
        k += 1
        faults = Faults(tmp_path, k)
        with pytest.MonkeyPatch.context() as mp:
            faults.install(mp)
            code, stdout, stderr = run_cli(_init_args(tiny_llama, out), capsys)
        if faults.calls < k:  # every write call has had its turn: this run went through
            assert code == 0, stderr
            break
        assert code == 1, (k, faults.failed, stderr)
        line = _one_line(code, stdout, stderr, 1)
        assert "No space left on device (free some space, or choose another --out" in line, line
        assert f"cannot write {out}" in line and ".tmp-" not in line, line  # named as in OUT, not the staging path
        seen.add(line.split(":")[1])
        _nothing_left(parent)
    assert k > 20 and (out / "svdtool.json").is_file()
    assert any("model-00001-of-00001.safetensors" in s for s in seen) and any("README.md" in s for s in seen)


@pytest.mark.parametrize("seed", range(4))
def test_init_disk_full_at_a_random_byte_of_a_shard(tiny_llama: Path, tmp_path: Path, capsys, seed: int) -> None:  # type: ignore[no-untyped-def]
    size = (tiny_llama / "model.safetensors").stat().st_size
    cut = random.Random(seed).randrange(size)
    real = os.pwrite

    def pwrite(fd: int, data: Any, offset: int) -> int:
        name = os.readlink(f"/proc/self/fd/{fd}")
        end = offset + len(memoryview(data).cast("B"))
        if name.endswith("model-00001-of-00001.safetensors") and offset <= cut < end:
            real(fd, memoryview(data).cast("B")[: cut - offset], offset)  # the disk fills up mid-tensor
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    parent = tmp_path / "outs"
    parent.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "pwrite", pwrite)
        code, stdout, stderr = run_cli(_init_args(tiny_llama, parent / "init"), capsys)
    line = _one_line(code, stdout, stderr, 1)
    assert line.startswith(f"error: cannot write {parent / 'init' / 'model-00001-of-00001.safetensors'}: No space")
    _nothing_left(parent)


@pytest.mark.parametrize(
    ("code", "exit_code", "advice"),
    [
        (errno.EACCES, 2, "choose an --out you may write to"),
        (errno.EROFS, 2, "the file system is read-only"),
        (errno.EIO, 1, "the disk reported an error"),
    ],
)
def test_exit_code_follows_the_reason(  # type: ignore[no-untyped-def]
    tiny_llama: Path, tmp_path: Path, capsys, code: int, exit_code: int, advice: str
) -> None:
    parent = tmp_path / "outs"
    parent.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        Faults(tmp_path, 3, code).install(mp)
        rc, stdout, stderr = run_cli(_init_args(tiny_llama, parent / "init"), capsys)
    line = _one_line(rc, stdout, stderr, exit_code)
    assert os.strerror(code) in line and advice in line
    _nothing_left(parent)


def test_small_filesystem_refused_before_writing(tiny_llama: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    real = os.statvfs

    class Small:
        def __init__(self, st: Any) -> None:
            self.f_frsize, self.f_bavail = st.f_frsize, 10  # ten blocks free

    parent = tmp_path / "outs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "statvfs", lambda p: Small(real(p)))
        rc, stdout, stderr = run_cli(_init_args(tiny_llama, parent / "init"), capsys)
    line = _one_line(rc, stdout, stderr, 1)
    assert f"error: not enough free space for {parent / 'init'}: it needs " in line and " free (free some" in line
    assert not parent.exists()  # nothing created, not even the parent


def test_stale_staging_folder_reported_and_removed(tiny_llama: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "init"
    stale = tmp_path / ".init.tmp-999999999-abcd"  # no such process
    (stale / "pissa_init").mkdir(parents=True)
    (stale / "model-00001-of-00001.safetensors").write_bytes(b"partial")
    other = tmp_path / ".init-2.tmp-1-abcd"  # another OUT's: not touched
    other.mkdir()
    running = tmp_path / f".init.tmp-{os.getppid()}-efgh"  # a live process (our parent): a run in progress
    running.mkdir()
    rc, stdout, stderr = run_cli(_init_args(tiny_llama, out), capsys)
    assert rc == 0, stderr
    assert f"removed {stale}, left behind by an interrupted run" in " ".join(stderr.split())
    assert not stale.exists() and other.is_dir() and running.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".init-2.tmp-1-abcd", running.name, "init"])


def test_spectrum_and_report_outputs(tiny_llama: Path, tiny_spectrum_dir: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "spec"
    with pytest.MonkeyPatch.context() as mp:
        Faults(tmp_path, 2).install(mp)  # the second write: spectrum.json, after its sidecar
        rc, stdout, stderr = run_cli(["spectrum", tiny_llama, "--device", "cpu", "--out", out], capsys)
    assert rc == 1 and "Traceback" not in stderr
    assert [x for x in stderr.splitlines() if x.startswith("error:")][0].startswith(f"error: cannot write {out}")
    assert not out.exists()  # the folder this run created is gone with its sidecar
    (tmp_path / "file").write_text("x")
    rc, stdout, stderr = run_cli(["spectrum", tiny_llama, "--device", "cpu", "--out", tmp_path / "file" / "s"], capsys)
    line = _one_line(rc, stdout, stderr, 2)
    assert line.startswith(f"error: cannot write {tmp_path / 'file'}") and "exists" in line or "directory" in line
    with pytest.MonkeyPatch.context() as mp:
        Faults(tmp_path, 1, errno.EACCES).install(mp)
        rc, stdout, stderr = run_cli(["report", tiny_spectrum_dir, "-o", tmp_path / "r.html"], capsys)
    line = _one_line(rc, stdout, stderr, 2)
    assert line.startswith(f"error: cannot write {tmp_path / 'r.html'}") and "Permission denied" in line
    assert not (tmp_path / "r.html").exists()
