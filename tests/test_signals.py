"""SIGINT and SIGTERM at several points of ``spectrum`` and ``init``: exit 130 / 143, one line, no traceback,
nothing left behind.

Each run is a real subprocess on the packaged SmolLM2-135M. The signal is sent at a point the test observes
rather than after a sleep: from ``/proc/PID`` (libtorch loaded: start-up is over; the checkpoint mapped:
compute has begun; the staging folder holds written data: mid-write).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from svdtool import interrupts

needs_proc = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="synchronises on /proc/PID")
ROOT = Path(__file__).resolve().parents[1]


def _maps(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def started(pid: int, parent: Path) -> bool:
    return "libtorch_cpu" in _maps(pid)  # torch is imported inside the command, after start-up


def computing(pid: int, parent: Path) -> bool:
    return "model.safetensors" in _maps(pid)  # the checkpoint is memory-mapped on its first read


def writing(pid: int, parent: Path) -> bool:
    """The staging folder's residual shard has data in it (pwrite allocates blocks in the sparse file)."""
    for shard in parent.glob(".*.tmp-*/model-*.safetensors"):
        try:
            if shard.stat().st_blocks > 4096:  # 2 MB: past the header, into the tensors
                return True
        except OSError:
            pass
    return False


def _interrupt(args: list[str], parent: Path, ready: Callable[[int, Path], bool], sig: int) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "svdtool", *args], cwd=parent, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not ready(proc.pid, parent):
            assert proc.poll() is None, f"finished before the signal: {proc.communicate()}"
            assert time.monotonic() < deadline, "never reached the point"
            time.sleep(0.02)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, stderr


# Each init run past start-up costs ~30 s of imports on a busy 2-core machine: one mid-write case covers
# mid-compute too (init computes and writes each tensor as it streams).
CASES = [
    ("spectrum", started, signal.SIGTERM),
    ("spectrum", computing, signal.SIGINT),
    ("init", started, signal.SIGINT),
    ("init", writing, signal.SIGTERM),
]


@pytest.mark.real
@needs_proc
@pytest.mark.parametrize(("command", "ready", "sig"), CASES, ids=[f"{c}-{r.__name__}-{s.name}" for c, r, s in CASES])
def test_interrupt(  # type: ignore[type-arg]
    smollm2_dir: Path, tmp_path: Path, command: str, ready: Callable, sig: signal.Signals
) -> None:
    out = tmp_path / "out"
    if command == "spectrum":
        args = ["spectrum", str(smollm2_dir), "--device", "cpu", "--out", str(out), "--report", str(tmp_path / "r.htm")]
    else:
        args = ["init", str(smollm2_dir), "--method", "pissa", "-r", "4", "--targets", "q_proj", "--device", "cpu",
                "--out", str(out)]  # fmt: skip
    code, stderr = _interrupt(args, tmp_path, ready, sig)
    assert code == 128 + sig, stderr
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert lines[-1] == "interrupted" and "Traceback" not in stderr and "Error" not in stderr, stderr
    assert list(tmp_path.iterdir()) == []  # no OUT, no staging folder, no report


def test_deferred_holds_the_signal_and_cleanup_is_not_cut_short() -> None:
    before = signal.getsignal(signal.SIGTERM)
    steps = []
    with pytest.raises(interrupts.Interrupted) as exc, interrupts.installed():
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGTERM)  # held back: both steps happen
            steps.append(1)
            steps.append(2)
        steps.append(3)  # never: the held signal is raised when the block ends
    assert steps == [1, 2] and exc.value.exit_code == 143 and interrupts.received() == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored (the CLI runs in-process in tests)

    cleaned = []
    with pytest.raises(interrupts.Interrupted) as exc, interrupts.installed():
        try:
            os.kill(os.getpid(), signal.SIGINT)
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C during the cleanup is ignored
            cleaned.append(True)
    assert cleaned == [True] and exc.value.exit_code == 130
