"""Probe: where the time of a calibration step goes on Llama-2-7B shapes, and what torch.compile saves.

    python benchmarks/probe_step_compile.py [--json out.json]      # on a GPU, ~3–5 min (compile included)

The step is the floor of benchmarks/bench_lora_ga.py: forward, loss and the activation backward (no weight
gradient), batch 2 × 1024, random bf16 weights. It reports the CUDA kernel time of one eager step by kind
(GEMM, attention, everything else: the elementwise and normalisation kernels a compiler could fuse), then ms
per step eagerly and with ``torch.compile(model)``. The question it answers: could a compiled model bring
the floor, and with it sketch mode, under 0.6× PEFT's time?
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from probe_step_graphs import SHAPES, build, step  # benchmarks/ is on sys.path when this file runs


def ms_per_step(device: torch.device, model: Any, data: list[torch.Tensor]) -> float:
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for ids in data:
        step(model, ids)
    torch.cuda.synchronize(device)
    return 1e3 * (time.perf_counter() - t0) / len(data)


def kernel_shares(model: Any, ids: torch.Tensor) -> dict[str, float]:
    """CUDA time (ms) of one step by kernel kind."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step(model, ids)
        torch.cuda.synchronize()
    out = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
    for ev in prof.key_averages():
        t = ev.device_time_total / 1e3  # ms
        name = ev.key.lower()
        if any(k in name for k in ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas")):
            out["gemm"] += t
        elif any(k in name for k in ("flash", "fmha", "attention", "sdpa")):
            out["attention"] += t
        else:
            out["other"] += t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    dims = SHAPES["llama2-7b"]
    model = build(dims, device)
    gen = torch.Generator().manual_seed(1)
    data = [torch.randint(0, dims["vocab"], (2, 1024), generator=gen).to(device) for _ in range(args.steps)]
    step(model, data[0])  # warm-up
    result: dict[str, Any] = {"eager_ms": ms_per_step(device, model, data), "kernels_ms": kernel_shares(model, data[0])}
    print(json.dumps(result), flush=True)
    compiled = torch.compile(model)
    t0 = time.perf_counter()
    step(compiled, data[0])
    step(compiled, data[1])
    result["compile_s"] = time.perf_counter() - t0
    result["compiled_ms"] = ms_per_step(device, compiled, data)
    result["compiled_kernels_ms"] = kernel_shares(compiled, data[0])
    print(json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(0), **result}, indent=2))


if __name__ == "__main__":
    main()
