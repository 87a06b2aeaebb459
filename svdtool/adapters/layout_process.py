"""The model-class layout (:func:`svdtool.adapters.layout.resolve_layout`) built in a child process, beside the work.

Building it imports transformers: 7–9 s of a warm H200 host's 25 s CorDA run, 2–3 s on a laptop, more than
the whole init of a small model. Plain decoders (Llama, Mistral, Qwen2/3, Gemma 1/2) need none of this: their
names give the layout (:func:`svdtool.adapters.layout.plain_decoder_layout`). For other models, ``svdtool init``
methods that need nothing else from transformers (no statistics, no gradients) start from the layout the tensor
names give (:func:`guess`) while a child process imports transformers and builds the real one;
:meth:`BackgroundLayout.result` waits for it. The caller compares the targets both select and starts over with
the real layout when they differ (e.g. GPT-2 folders whose tensor names lack the ``transformer.`` prefix), so
the output never depends on the guess.

A child costs its own ``import torch`` (1–4 s) and a core, so ``SVDTOOL_LAYOUT_PROCESS=auto`` (the default) starts
one only where that is repaid: transformers not yet imported (else building in-process takes a fraction of a
second), a checkpoint of at least ``MIN_BYTES`` (a stream of several seconds to hide the import behind) and at
least ``MIN_CPUS`` cores. ``1`` always starts one (with a ``model_type``), ``0`` never. A child that fails for any
reason (no interpreter, a crash, output that does not parse) costs nothing but the in-process build it replaces.

The CLI starts the child for a local folder before it imports torch (:func:`prefetch`), so the child's
imports overlap the parent's; ``run_init`` adopts it (:func:`background`) or stops it (:func:`discard`).

Run as ``python -m svdtool.adapters.layout_process FILE`` (FILE holds ``{"config": …, "tensors": [[name,
shape], …]}``) or ``… --folder DIR``; the layout goes to stdout as JSON.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from svdtool import naming
from svdtool.adapters import layout as lay
from svdtool.loading import TensorInfo

#: Longest wait for the child, in seconds, before the layout is built in-process instead.
CHILD_TIMEOUT = 300.0
#: ``auto`` starts a child for checkpoints of at least this many bytes …
MIN_BYTES = 4 << 30
#: … on machines with at least this many cores.
MIN_CPUS = 4


def child_wanted(config: dict[str, Any] | None, nbytes: int) -> bool:
    """Whether a child process should build the layout of a checkpoint of ``nbytes`` (``SVDTOOL_LAYOUT_PROCESS``:
    auto | 1 | 0). ``auto`` never starts one for a plain decoder's config: its names give the layout
    (:func:`svdtool.adapters.layout.plain_decoder_layout`)."""
    mode = os.environ.get("SVDTOOL_LAYOUT_PROCESS", "auto").strip().lower()
    if mode in ("0", "off", "false", "no") or not config or "model_type" not in config:
        return False
    if mode in ("1", "on", "true", "yes"):
        return True
    archs = config.get("architectures") or [""]
    plain = config["model_type"] in naming.PLAIN_DECODERS and str(archs[0]).endswith("ForCausalLM")
    big, cores = nbytes >= MIN_BYTES, (os.cpu_count() or 1) >= MIN_CPUS
    return big and cores and not plain and "transformers.modeling_utils" not in sys.modules


def guess(config: dict[str, Any] | None, infos: list[TensorInfo]) -> lay.ModelLayout:
    """The layout from tensor names alone (what :func:`resolve_layout` falls back to), without its note."""
    out = lay.names_layout(config, infos, "")
    out.notes.clear()
    return out


def to_json(layout: lay.ModelLayout) -> str:
    return json.dumps(asdict(layout))


def from_json(text: str) -> lay.ModelLayout:
    d = json.loads(text)
    d["weights"] = {k: lay.WeightModule(**w) for k, w in d["weights"].items()}
    return lay.ModelLayout(**d)


class BackgroundLayout:
    """The real layout of ``config`` + ``infos``, being built in a child process when that saves time."""

    def __init__(self, config: dict[str, Any] | None, infos: list[TensorInfo], *, start: bool = True) -> None:
        self.config, self.infos = config, infos
        self.proc: subprocess.Popen[str] | None = None
        self.file: Path | None = None
        self.waited = 0.0  # seconds result() blocked
        if start and child_wanted(config, sum(i.nbytes for i in infos)):
            fd, name = tempfile.mkstemp(prefix="svdtool-layout-", suffix=".json")
            self.file = Path(name)
            with os.fdopen(fd, "w") as fh:
                json.dump({"config": config, "tensors": [[i.name, list(i.shape)] for i in infos]}, fh)
            self._spawn([name])

    @property
    def started(self) -> bool:
        return self.proc is not None

    def _spawn(self, args: list[str]) -> None:
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "svdtool.adapters.layout_process", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                text=True,
            )
        except OSError:
            self.close()

    def result(self) -> lay.ModelLayout:
        """The model class's layout: the child's answer, else built here."""
        t0 = time.perf_counter()
        try:
            if self.proc is not None:
                with contextlib.suppress(Exception):  # any failure of the child: build it here instead
                    out, _ = self.proc.communicate(timeout=CHILD_TIMEOUT)
                    if self.proc.returncode == 0:
                        return from_json(out)
            return lay.resolve_layout(self.config, self.infos)
        finally:
            self.close()
            self.waited = time.perf_counter() - t0

    def close(self) -> None:
        """Stop the child (if still running) and remove its input file."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.file is not None:
            self.file.unlink(missing_ok=True)
            self.file = None


#: children started by :func:`prefetch`, by the folder's resolved path
_PREFETCHED: dict[str, BackgroundLayout] = {}


def _folder_key(model: str) -> str | None:
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else None


def prefetch(model: str) -> None:
    """Start the child for a local checkpoint folder now, before this process imports torch (1–4 s that the
    child's imports then overlap). :func:`background` adopts it; a run that does not is expected to
    :func:`discard` it."""
    key = _folder_key(model)
    if key is None or key in _PREFETCHED:
        return
    try:
        config = json.loads((Path(key) / "config.json").read_text())
        size = sum(f.stat().st_size for f in Path(key).glob("*.safetensors"))
    except (OSError, ValueError):
        return
    if not isinstance(config, dict) or not child_wanted(config, size):
        return
    bg = BackgroundLayout(config, [], start=False)
    bg._spawn(["--folder", key])
    if bg.started:
        if not _PREFETCHED:
            atexit.register(_stop_all)  # a run that fails before adopting it leaves no child behind
        _PREFETCHED[key] = bg


def _stop_all() -> None:
    while _PREFETCHED:
        _PREFETCHED.popitem()[1].close()


def discard(model: str) -> None:
    """Stop a prefetched child this run will not use."""
    key = _folder_key(model)
    bg = _PREFETCHED.pop(key, None) if key else None
    if bg is not None:
        bg.close()


def background(model: str, config: dict[str, Any] | None, infos: list[TensorInfo]) -> BackgroundLayout:
    """The prefetched child of ``model`` (its fallback set to ``config`` + ``infos``), else a new one if wanted."""
    key = _folder_key(model)
    bg = _PREFETCHED.pop(key, None) if key else None
    if bg is None:
        return BackgroundLayout(config, infos)
    bg.config, bg.infos = config, infos
    return bg


def _main(args: list[str]) -> None:
    if args[0] == "--folder":  # prefetched: read the folder's config and headers here
        from svdtool.loading import open_checkpoint

        with open_checkpoint(args[1]) as ckpt:
            config, infos = ckpt.meta.config, ckpt.tensors()
    else:
        data = json.loads(Path(args[0]).read_text())
        config = data["config"]
        infos = [TensorInfo(name, tuple(shape), "", "", 0) for name, shape in data["tensors"]]
    sys.stdout.write(to_json(lay.resolve_layout(config, infos)))


if __name__ == "__main__":
    _main(sys.argv[1:])
