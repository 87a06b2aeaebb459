"""Sharded gradient estimate under torchrun: time and per-rank GPU memory against one process and the model.

    python benchmarks/bench_sharded_gradients.py MODEL --calib DATA [--nproc 1,2,8] [--modes exact,sketch]
           [--samples 32 --max-length 1024 --batch-size 2] [--json out.json]

MODEL is a transformers folder with a tokenizer (``make_checkpoint.py DIR --tokenizer TOK`` builds a
Llama-2-7B-shaped one), DATA a calibration file or dataset name. For each mode it runs the estimate once in
a plain process, then under ``torchrun --standalone --nproc-per-node N`` for every N (N = 1 with
``SVDTOOL_DISTRIBUTED=on``: the sharded path on one GPU, its cost over the plain run). Every rank reports its
wall time, its peak ``torch.cuda.max_memory_allocated``, its accumulator bytes and ‖G‖_F of the targets it
owns; the driver prints them beside the per-rank model of docs/distributed.md (2P/N weights + 4·P_t/N exact
accumulators, or the sketches / N) and checks every ‖G‖_F against the plain run (≤ 1e-5 relative).
Needs GPUs for N > 1 (CPU ranks work, as a smoke test on the tiny test model); not run on CI, not run on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    """One process (or one rank): the estimate, then this rank's numbers as one JSON file."""
    import torch

    from svdtool.calibration import CalibRequest
    from svdtool.engine import world as w
    from svdtool.gradients import GradientRequest, estimate_gradients

    joined = w.setup_from_env()
    world = w.current()
    calib = CalibRequest(args.calib, samples=args.samples, max_length=args.max_length, batch_size=args.batch_size)
    req = GradientRequest(args.model, calib, device="cuda" if torch.cuda.is_available() else "cpu", mode=args.mode)
    t0 = time.perf_counter()
    est = estimate_gradients(req)
    seconds = time.perf_counter() - t0
    norms = {}
    for name, g in est.provider().items():
        norms[name] = float(g.float().norm()) if isinstance(g, torch.Tensor) else float(g.S.float().norm())
    record = {
        "rank": world.rank,
        "size": world.size,
        "seconds": seconds,
        "phases": est.info.phases,
        "peak_device_memory": est.info.peak_device_memory,
        "accumulator_bytes": est.info.plan.get("accumulator_bytes_per_rank"),
        "norms": norms,
        "shapes": est.shapes,
    }
    Path(args.out, f"rank{world.rank}.json").write_text(json.dumps(record))
    if joined:
        w.teardown()


def _model_bytes(shapes: dict[str, list[int]], model: str, mode: str, n: int) -> float:
    """docs/distributed.md's per-rank model: bf16 weights 2P/N plus the accumulators (exact 4·P_t/N)."""
    from svdtool.loading import open_checkpoint

    with open_checkpoint(model) as ckpt:
        params = sum(i.numel for i in ckpt.tensors())
    targets = sum(o * i for o, i in shapes.values())
    acc = 4 * targets if mode == "exact" else 0
    return (2 * params + acc) / n


def drive(args: argparse.Namespace) -> None:
    work = Path(args.work)
    rows = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    common = [args.model, "--calib", args.calib, "--samples", str(args.samples), "--max-length",
              str(args.max_length), "--batch-size", str(args.batch_size)]  # fmt: skip
    for mode in args.modes.split(","):
        runs: dict[str, list[dict]] = {}
        for label, launcher, extra_env in [("plain", [sys.executable], {})] + [
            (f"torchrun {n}", [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}"],
             {"SVDTOOL_DISTRIBUTED": "on"} if n == 1 else {})
            for n in (int(x) for x in args.nproc.split(","))
        ]:  # fmt: skip
            out = work / mode / label.replace(" ", "-")
            out.mkdir(parents=True, exist_ok=True)
            cmd = [*launcher, __file__, "--worker", "--mode", mode, "--out", str(out), *common]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env={**env, **extra_env})
            wall = time.perf_counter() - t0
            ranks = [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]
            runs[label] = ranks
            n = ranks[0]["size"]
            rows.append({
                "mode": mode, "run": label, "wall_s": round(wall, 1),
                "estimate_s": round(max(r["seconds"] for r in ranks), 2),
                "peak_gib_per_rank": [round((r["peak_device_memory"] or 0) / 2**30, 2) for r in ranks],
                "model_gib_per_rank": round(_model_bytes(ranks[0]["shapes"], args.model, mode, n) / 2**30, 2),
                "accumulator_gib_per_rank": [round((r["accumulator_bytes"] or 0) / 2**30, 2) for r in ranks],
            })  # fmt: skip
        plain = {k: v for r in runs["plain"] for k, v in r["norms"].items()}
        for label, ranks in runs.items():
            got = {k: v for r in ranks for k, v in r["norms"].items()}
            assert set(got) == set(plain), label
            worst = max(abs(got[k] - plain[k]) / max(plain[k], 1e-30) for k in plain)
            assert worst <= 1e-5, f"{mode} {label}: ‖G‖ differs by {worst:.2e}"
    for row in rows:
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--calib", required=True)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--nproc", default="1,2,8")
    ap.add_argument("--modes", default="exact,sketch")
    ap.add_argument("--work", default="/tmp/bench-sharded-gradients")
    ap.add_argument("--json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
