"""Benchmark `svdtool spectrum` on a Llama-2-7B-shaped bf16 checkpoint against per-matrix fp32 svdvals.

    python benchmarks/bench_spectrum.py [--dir /tmp/llama7b] [--small] [--json out.json]

Runs, in one process:
  * svdtool end to end (open, read, σ of all 226 matrices, metrics), page cache warm, and cold
    when the page cache can be dropped (root on Linux): the default (two-stage eigen-solves shared
    with CPU processes), other bandwidths, and the GPU alone (`--cpu-workers 0`, cuSOLVER syevd);
  * the WeightWatcher route, `torch.linalg.svdvals` in fp32 per matrix, on a sample of matrices
    (one layer plus the embedding) and extrapolated by shape to the whole model;
  * accuracy of both against float64 `torch.linalg.svdvals` on that sample: the max relative error
    over σ ≥ 1e-6·σ₁, and the max relative error of the smallest σ.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from make_checkpoint import LLAMA2_7B, SMALL, make_llama_checkpoint  # noqa: E402

from svdtool.commands.spectrum import SpectrumRequest, run_spectrum  # noqa: E402
from svdtool.linalg import band, bulge  # noqa: E402
from svdtool.loading import open_checkpoint  # noqa: E402


def drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rel_err(approx: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max rel err over σ ≥ 1e-6 σ₁, rel err of the smallest σ)."""
    mask = ref >= 1e-6 * ref[0]
    err = np.abs(approx - ref) / ref
    return float(err[mask].max()), float(err[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/llama7b")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json")
    ap.add_argument("--sweep", default="", help="extra --cpu-workers values to time, e.g. 6,10")
    ap.add_argument("--no-cold", action="store_true", help="skip the run with the page cache dropped")
    ap.add_argument("--bandwidths", default="16", help="other GPU-chase band widths to time")
    args = ap.parse_args()
    device = torch.device(args.device)
    dims = SMALL if args.small else LLAMA2_7B
    t0 = time.perf_counter()
    path = make_llama_checkpoint(args.dir, **dims)  # type: ignore[arg-type]
    print(f"checkpoint {path} ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    import peft  # noqa: F401  (versions only)
    import transformers

    versions = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__}
    print(f"device: {gpu}; versions: {versions}")

    rows = []
    # Warm-up: CUDA context, cuSOLVER handles, page cache.
    run_spectrum(SpectrumRequest(model=str(path), device=args.device, include=["*layers.0.*"]))
    # (label, --cpu-workers, cold cache, width of the GPU chase or None for the CPU band route)
    chase_b = bulge.BANDWIDTH if bulge.available(device) else None
    configs = [(f"svdtool (default: band {chase_b or band.BANDWIDTH}), warm cache", None, False, chase_b)]
    if device.type == "cuda":
        if not args.no_cold:
            configs.append(("svdtool (default), cold cache", None, True, chase_b))
        if chase_b is not None:
            for b in map(int, filter(None, args.bandwidths.split(","))):
                configs.append((f"svdtool (GPU chase, band {b}), warm cache", None, False, b))
            configs.append((f"svdtool (CPU band route: dsbevd, band {band.BANDWIDTH}), warm cache", None, False, None))
        for n in filter(None, args.sweep.split(",")):
            configs.append((f"svdtool (GPU + {n} CPU processes), warm cache", int(n), False, chase_b))
        configs.append(("svdtool without the GPU chase, --cpu-workers 0 (cuSOLVER syevd), warm cache", 0, False, None))
    result = None
    for label, cpu_workers, cold, width in configs:
        if cold and not drop_page_cache():
            print("cannot drop the page cache (not root?): skipping the cold run", file=sys.stderr)
            continue
        bulge.ENABLED, bulge.BANDWIDTH = width is not None, width or chase_b or band.BANDWIDTH
        sync(device)
        t = time.perf_counter()
        run = run_spectrum(SpectrumRequest(model=str(path), device=args.device, cpu_workers=cpu_workers))
        sync(device)
        wall = time.perf_counter() - t
        bulge.ENABLED, bulge.BANDWIDTH = chase_b is not None, chase_b or bulge.BANDWIDTH
        result = result or run
        m = run.result.manifest
        rows.append(
            {
                "path": label,
                "matrices": len(run.result.matrices),
                "seconds": round(wall, 2),
                "methods": dict(Counter(x.method for x in run.result.matrices)),
                # Worker-thread seconds per method (on a GPU: the GPU thread's time, not the CPU helpers').
                "method_seconds": {
                    k: round(sum(x.seconds for x in run.result.matrices if x.method == k), 2)
                    for k in sorted({x.method for x in run.result.matrices})
                },
                "device": m.device,
                "timings": m.timings,
            }
        )
        print(rows[-1], file=sys.stderr)
    assert result is not None

    # Sample: every matrix of layer 0, plus the embedding and lm_head.
    ckpt = open_checkpoint(str(path))
    infos = [i for i in ckpt.tensors() if len(i.shape) == 2 and (".layers.0." in i.name or "layers" not in i.name)]
    ww_time: dict[tuple[int, ...], float] = {}
    acc_svdtool, acc_fp32, small_svdtool, small_fp32 = [], [], [], []
    for info in infos:
        w = ckpt.read(info).to(device)
        w32 = w.float()
        torch.linalg.svdvals(w32)  # warm-up for this shape
        sync(device)
        t = time.perf_counter()
        s32 = torch.linalg.svdvals(w32)
        sync(device)
        ww_time[info.shape] = time.perf_counter() - t
        ref = torch.linalg.svdvals(w.double()).cpu().numpy()
        a, b = rel_err(result.sigmas[info.name], ref)
        c, d = rel_err(s32.double().cpu().numpy(), ref)
        acc_svdtool.append(a)
        small_svdtool.append(b)
        acc_fp32.append(c)
        small_fp32.append(d)
        del w, w32
    shapes = Counter(i.shape for i in ckpt.tensors() if len(i.shape) == 2)
    ww_total = sum(ww_time[s] * n for s, n in shapes.items())
    rows.append(
        {
            "path": "torch.linalg.svdvals fp32 per matrix (WeightWatcher route), extrapolated by shape",
            "matrices": sum(shapes.values()),
            "seconds": round(ww_total, 2),
            "per_shape_seconds": {str(k): round(v, 4) for k, v in ww_time.items()},
        }
    )
    accuracy = {
        "sample": [i.name for i in infos],
        "svdtool_max_rel_err_sigma_ge_1e-6_sigma1": max(acc_svdtool),
        "svdtool_rel_err_smallest_sigma_max": max(small_svdtool),
        "fp32_svdvals_max_rel_err_sigma_ge_1e-6_sigma1": max(acc_fp32),
        "fp32_svdvals_rel_err_smallest_sigma_max": max(small_fp32),
    }
    print()
    print("| path | matrices | seconds |\n|---|---|---|")
    for r in rows:
        print(f"| {r['path']} | {r['matrices']} | {r['seconds']} |")
    print()
    for k, v in accuracy.items():
        print(f"{k}: {v if isinstance(v, list) else f'{v:.3e}'}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"device": gpu, "versions": versions, "rows": rows, "accuracy": accuracy}, indent=2)
        )


if __name__ == "__main__":
    main()
