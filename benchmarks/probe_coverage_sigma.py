"""Probe: coverage's σ of 224 Llama-2-7B-shaped gradients, before (one float64 ``eigvalsh`` per gradient)
and through the engine (``commands/coverage_matrices.gradient_coverage``: batched band route, refinement).

    PYTHONPATH=. python benchmarks/probe_coverage_sigma.py               # on the GPU, 7B shapes
    PYTHONPATH=. python benchmarks/probe_coverage_sigma.py --tail 1e-6   # σ_min/σ₁ < 1e-4: the refinement's cost
    PYTHONPATH=. python benchmarks/probe_coverage_sigma.py --device cpu --hidden 64 --layers 2   # a smoke run

Gradients are synthetic float32 U·diag(σ)·Vᵀ on the device, σ log-spaced from 1 down to ``--tail``·σ₁
(a gradient's σ decay; how far down decides whether small values are refined, and by which method). Prints
the seconds of both routes, the engine's method counts, and the largest coverage difference between them.
"""

# ruff: noqa: T201
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from svdtool import coverage
from svdtool.commands.coverage_matrices import gradient_coverage
from svdtool.linalg import exact

TYPES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj"}
RANKS = [8, 32, 128]


def shapes(hidden: int, inter: int, layers: int) -> dict[str, tuple[int, int]]:
    out = {}
    for i in range(layers):
        for path in TYPES.values():
            out[f"model.layers.{i}.{path}.weight"] = (hidden, hidden)
        out[f"model.layers.{i}.mlp.gate_proj.weight"] = (inter, hidden)
        out[f"model.layers.{i}.mlp.up_proj.weight"] = (inter, hidden)
        out[f"model.layers.{i}.mlp.down_proj.weight"] = (hidden, inter)
    return out


def gradients(shp: dict[str, tuple[int, int]], tail: float, dev: torch.device) -> dict[str, torch.Tensor]:
    """One random orthonormal basis pair per shape (QR is the slow part), a different σ scale per matrix."""
    gen = torch.Generator(device=dev).manual_seed(0)
    bases: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    out = {}
    for k, (name, (m, n)) in enumerate(shp.items()):
        if (m, n) not in bases:
            r = min(m, n)
            u = torch.linalg.qr(torch.randn(m, r, device=dev, generator=gen))[0]
            v = torch.linalg.qr(torch.randn(n, r, device=dev, generator=gen))[0]
            bases[(m, n)] = (u, v)
        u, v = bases[(m, n)]
        sigma = torch.logspace(0, np.log10(tail), u.shape[1], device=dev) * (1 + k / len(shp))
        out[name] = (u * sigma) @ v.T  # (m, n) float32
    return out


def previous(grads: dict[str, torch.Tensor], dev: torch.device) -> tuple[dict[str, dict[str, float]], float]:
    """The route before the engine: sqrt(eigvalsh) of each float64 Gram matrix, one gradient at a time."""
    out = {}
    t = time.perf_counter()
    for name, g in grads.items():
        lam = torch.linalg.eigvalsh(exact.gram64(g, dev))
        sigma = lam.clamp_min(0).sqrt().flip(0).cpu().numpy()
        out[name] = coverage.coverage_from_sigma(sigma, coverage.frobenius_sq(g, dev), coverage.coverage_levels(RANKS))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--inter", type=int, default=None, help="default: 11008/4096 of --hidden")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--tail", type=float, default=1e-3, help="σ_min/σ₁ of every gradient")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    dev = torch.device(a.device)
    inter = a.inter or a.hidden * 11008 // 4096
    shp = shapes(a.hidden, inter, a.layers)
    grads = gradients(shp, a.tail, dev)
    old, t_old = previous(grads, dev)
    gradient_coverage(dict(list(grads.items())[:7]), dict(list(shp.items())[:7]), ranks=RANKS, device=dev)  # warm-up
    t = time.perf_counter()
    new = gradient_coverage(grads, shp, ranks=RANKS, device=dev)
    t_new = time.perf_counter() - t
    worst = max(abs(m.coverage[k] - old[m.name][k]) for m in new.matrices for k in m.coverage)
    report = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "matrices": len(shp),
        "tail": a.tail,
        "previous_eigvalsh_s": round(t_old, 3),
        "engine_s": round(t_new, 3),
        "methods": new.methods,
        "helpers": new.helpers,
        "max_coverage_difference": worst,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
