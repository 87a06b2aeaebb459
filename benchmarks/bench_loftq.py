"""Benchmark svdtool's LoftQ (and QPiSSA) against PEFT's ``loftq_init`` on Llama-2-7B shapes, on one GPU.

    python benchmarks/bench_loftq.py [--iters 5] [--rank 64] [--layers 2] [--json out.json]
    python benchmarks/bench_loftq.py --worker svdtool|peft|qpissa ...   # one measurement (spawned by the above)

Each measurement runs in a fresh process (``--worker``): the 7 linear types of ``--layers`` Llama-2-7B layers,
random bf16 weights with a decaying spectrum (σ_i ∝ i^−0.6, as in peft_inits2.md §6), already on the GPU; the
time is the per-weight init only (no checkpoint I/O). PEFT runs ``loftq_init(W, 4, r, num_iter)`` with α = r (the
only α its output is right for), svdtool the ``loftq`` / ``qpissa`` methods on the same weights, with bf16 load
dtype and no double quantisation (PEFT's setting). Each worker also records the quantisation-error ratio
‖W − (Q + s·B·A)‖_F / ‖W − Q(W)‖_F per weight (median and max).

Target (issue 15): svdtool LoftQ ≥ 5× PEFT's ``loftq_init`` at 5 iterations. Not run yet (written without a GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

#: Llama-2-7B linear shapes (out, in): q, k, v, o, gate, up, down.
SHAPES = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]


def weights(layers: int, device: torch.device) -> list[torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(0)
    out = []
    for _ in range(layers):
        for m, n in SHAPES:
            k = min(m, n)
            u, _ = torch.linalg.qr(torch.randn(m, k, device=device, generator=gen))
            v, _ = torch.linalg.qr(torch.randn(n, k, device=device, generator=gen))
            s = 0.5 * torch.arange(1, k + 1, device=device, dtype=torch.float32) ** -0.6
            out.append(((u * s) @ v.T).to(torch.bfloat16))
    return out


def ratio(w: torch.Tensor, deq: torch.Tensor, delta: torch.Tensor) -> float:
    from svdtool.quant import nf4

    w64 = w.double()
    plain = nf4.fake_quantize(w).double()
    return float((w64 - deq.double() - delta.double()).norm() / (w64 - plain).norm())


def worker(kind: str, iters: int, rank: int, layers: int) -> dict[str, Any]:
    device = torch.device("cuda")
    ws = weights(layers, device)
    ratios, seconds = [], 0.0
    for w in ws:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        if kind == "peft":
            from peft.utils.loftq_utils import loftq_init

            deq, lora_a, lora_b = loftq_init(w, 4, rank, num_iter=iters)
            delta = lora_b.float() @ lora_a.float()
        else:
            from svdtool.methods import InitOptions, get_method
            from svdtool.quant import nf4

            opts = InitOptions(rank=rank, alpha=float(rank), extra={"quant_iters": iters})
            res = get_method("loftq" if kind == "svdtool" else "qpissa").fn(
                w.double(), opts, source_dtype=torch.bfloat16
            )
            deq = nf4.fake_quantize(res.residual.to(torch.bfloat16))
            delta = res.lora_B @ res.lora_A
        torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        ratios.append(ratio(w, deq, delta))
    return {
        "kind": kind,
        "weights": len(ws),
        "seconds": round(seconds, 3),
        "median_ratio": statistics.median(ratios),
        "max_ratio": max(ratios),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", choices=["svdtool", "peft", "qpissa"], default=None)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.iters, args.rank, args.layers)))
        return
    results = []
    for kind in ("peft", "svdtool", "qpissa"):
        cmd = [sys.executable, __file__, "--worker", kind, "--iters", str(args.iters), "--rank", str(args.rank)]
        cmd += ["--layers", str(args.layers)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(results[-1], flush=True)
    speedup = results[0]["seconds"] / results[1]["seconds"]
    summary = {"iters": args.iters, "rank": args.rank, "results": results, "loftq_speedup_vs_peft": speedup}
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2)


if __name__ == "__main__":
    main()
