"""`torchrun -m svdtool` against a plain run: spectrum and PiSSA init, wall time per world size.

    python benchmarks/bench_distributed.py [--dir /tmp/llama7b] [--small] [--nproc 1,2,8] [--json out.json]

For each command it times the plain single process, then ``torchrun --standalone --nproc-per-node N``
for every N (one rank per GPU), each end to end as a user runs it (launcher start-up included), and
checks that every distributed output equals the plain one (spectrum: the σ sidecar bit for bit;
init: SHA-256 of every residual shard and the adapter). World size 1 under torchrun runs the plain
code path, so its overhead is the launcher's. Needs GPUs for N > 1; not run on CI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from make_checkpoint import LLAMA2_7B, SMALL, make_llama_checkpoint  # noqa: E402


def _run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _digest(folder: Path) -> dict[str, str]:
    names = ("*.safetensors",) if (folder / "spectra.safetensors").exists() else ("**/*.safetensors",)
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for pattern in names
        for p in sorted(folder.glob(pattern))
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/llama7b")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--nproc", default="1,2,8")
    ap.add_argument("--json")
    args = ap.parse_args()
    model = make_llama_checkpoint(Path(args.dir), **(SMALL if args.small else LLAMA2_7B))  # type: ignore[arg-type]
    work = Path(args.dir).parent / "bench-distributed"
    shutil.rmtree(work, ignore_errors=True)
    commands = {
        "spectrum": ["spectrum", str(model), "--format", "json"],
        "init": ["init", str(model), "--method", "pissa", "-r", "16", "--format", "json"],
    }
    results: dict[str, dict[str, float]] = {}
    for name, cmd in commands.items():
        plain = work / f"{name}-plain"
        times = {"plain": _run([sys.executable, "-m", "svdtool", *cmd, "--out", str(plain)])}
        for n in (int(x) for x in args.nproc.split(",")):
            out = work / f"{name}-{n}"
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"]
            times[f"torchrun {n}"] = _run([*launcher, "-m", "svdtool", *cmd, "--out", str(out)])
            assert _digest(out) == _digest(plain), f"{name} on {n} ranks differs from the plain run"
        results[name] = times
        print(name, {k: f"{v:.1f} s" for k, v in times.items()}, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
