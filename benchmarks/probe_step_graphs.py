"""Probe: would replaying each calibration step as one CUDA graph make gradient estimation faster?

    python benchmarks/probe_step_graphs.py [--json out.json]      # on a GPU, ~2 min

A step here is what every LoRA-GA estimator must do per micro-batch: forward, loss, and the backward of the
activation gradients (no weight gradient; the floor of benchmarks/bench_lora_ga.py). It runs eagerly, and
as a ``torch.cuda.graph`` captured once and replayed with fresh inputs (after an eager warm-up on a side
stream, as the torch documentation asks); "graphed ms" includes that step and the capture, "replay ms"
is the replays alone. Two models with random bf16 weights: Llama-2-7B shapes, where
the GEMMs dominate, and SmolLM2-135M shapes, where a step is thousands of small kernels. Batch 2 × 1024
tokens. The table gives ms per step and peak device memory (allocated and reserved) for both.

On the 7B model the step is bound by the GPU, not by kernel launches, so the graph saves nothing and its
private memory pool costs reserved memory; on small models it saves most of the step. svdtool therefore
replays its steps as graphs only where a timed trial at the start of each pass shows the replay faster
(svdtool/gradients/graphed.py; docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

GiB = 1 << 30
SHAPES = {
    "llama2-7b": dict(hidden=4096, intermediate=11008, layers=32, heads=32, kv=32, vocab=32000),
    "smollm2-135m": dict(hidden=576, intermediate=1536, layers=30, heads=9, kv=3, vocab=49152),
}


def build(dims: dict[str, int], device: torch.device) -> Any:
    """The bench's random bf16 Llama, backward-propagating from the embedding output (no weight gradient)."""
    from bench_lora_ga import build_model  # benchmarks/ is on sys.path when this file runs as a script

    model = build_model(dims, device, seed=0)
    model.get_input_embeddings().register_forward_hook(lambda m, a, o: o.detach().requires_grad_(True))
    return model


def step(model: Any, ids: torch.Tensor) -> None:
    logits = model(input_ids=ids, use_cache=False).logits  # (B, T, V)
    shift = logits[:, :-1].float()
    ce = torch.nn.functional.cross_entropy(shift.reshape(-1, shift.shape[-1]), ids[:, 1:].reshape(-1))
    ce.backward()


def timed(device: torch.device, run: Callable[[], None]) -> tuple[float, float, float]:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    run()
    torch.cuda.synchronize(device)
    return (
        time.perf_counter() - t0,
        torch.cuda.max_memory_allocated(device) / GiB,
        torch.cuda.max_memory_reserved(device) / GiB,
    )


def probe(name: str, steps: int, batch: int, seq: int, device: torch.device) -> dict[str, Any]:
    dims = SHAPES[name]
    model = build(dims, device)
    gen = torch.Generator().manual_seed(1)
    data = [torch.randint(0, dims["vocab"], (batch, seq), generator=gen).to(device) for _ in range(steps)]
    step(model, data[0])  # warm-up: cuBLAS handles, kernels chosen

    def eager() -> None:
        for ids in data:
            step(model, ids)

    replay_s: list[float] = []

    def graphed() -> None:
        static = data[0].clone()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            step(model, data[0])  # the first step eagerly, on a side stream
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step(model, static)
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for ids in data[1:]:
            static.copy_(ids)
            graph.replay()
        torch.cuda.synchronize(device)
        replay_s.append(time.perf_counter() - t0)

    out: dict[str, Any] = {"model": name, "steps": steps, "batch": batch, "seq": seq}
    for label, run in (("eager", eager), ("graphed", graphed)):
        seconds, peak, reserved = timed(device, run)
        out[label] = {"ms_per_step": 1e3 * seconds / steps, "peak_gib": peak, "reserved_gib": reserved}
        torch.cuda.empty_cache()
    out["graphed"]["ms_per_replay"] = 1e3 * replay_s[0] / (steps - 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this probe needs a CUDA GPU")
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    rows = []
    for name in SHAPES:
        rows.append(probe(name, args.steps, args.batch, args.seq, device))
        gc.collect()  # the model and its graph go before the next model is built
        torch.cuda.empty_cache()
    print(f"\n{'model':14} {'eager ms':>9} {'graphed ms':>11} {'replay ms':>10} {'speed-up':>9} ", end="")
    print(f"{'eager GiB':>18} {'graphed GiB':>18}")
    for r in rows:
        e, g = r["eager"], r["graphed"]
        print(
            f"{r['model']:14} {e['ms_per_step']:9.1f} {g['ms_per_step']:11.1f} {g['ms_per_replay']:10.1f} "
            f"{e['ms_per_step'] / g['ms_per_step']:8.2f}× "
            f"{e['peak_gib']:8.1f} / {e['reserved_gib']:5.1f}r {g['peak_gib']:8.1f} / {g['reserved_gib']:5.1f}r"
        )
    if args.json:
        args.json.write_text(json.dumps({"device": torch.cuda.get_device_name(0), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
