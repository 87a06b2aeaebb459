"""Benchmark LoRA-GA gradient estimation + init: svdtool exact, svdtool sketch, and PEFT, side by side.

    python benchmarks/bench_lora_ga.py [--json out.json]       # Llama-2-7B shapes, bf16, on a GPU (~3 min)
    python benchmarks/bench_lora_ga.py --small                 # tiny shapes on the CPU, under a minute

A Llama-2-7B-shaped model with random bf16 weights (N(0, 0.02²), seeded) is built in GPU memory; the
calibration data are 128 samples × 1024 random token ids (loss on every token), batch 2 × 64 steps; the
targets are all 7 linear types of every layer; r = 8, α = 16. Each configuration runs in a fresh
subprocess, so peak memory (``torch.cuda.max_memory_allocated``, weights included; ``max_memory_reserved``,
what the caching allocator took from the device, beside it) never carries over:

* ``svdtool-exact``: float32 gradients folded inside backward (no ``.grad`` buffers), layer groups
  (default: auto, 2 for bf16), each group's G reduced to its top-2r triplets on the GPU
  (``svd_lowrank`` q = 4r, niter = 4, seeded) as soon as the group is done; then the LoRA-GA init
  (reference convention) of all 224 weights, W_res written into the model in place.
* ``svdtool-sketch``: single-pass range/co-range sketches of G from the layers' inputs and output
  gradients (no weight gradient is ever formed), top-2r recovery, then the same init.
* ``peft``: ``preprocess_loraga(model, LoraConfig(init_lora_weights="lora_ga"), train_step)`` with a
  train_step that runs the 64 batches, then ``get_peft_model``.

Timed: gradient estimation + init, from data on the host to initialised weights (model build excluded).
Targets from the issue: exact no slower than PEFT and no more peak memory; sketch ≤ 0.6× both.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

# svdtool configs may carry ":MICRO[:GROUPS]" (micro-batch, layer groups): svdtool-sketch:2, svdtool-exact:2:1.
# "floor" is a reference, not a method: forward + backward of the activation gradients only (no weight
# gradient, no fold), the least any estimator that back-propagates must do; "floor:M" replays CUDA graphs
# as svdtool does, "floor-eager:M" launches every kernel from Python. SVDTOOL_CUDA_GRAPHS=0 in the
# environment runs the svdtool configurations eagerly too.
CONFIGS = ("svdtool-exact", "svdtool-sketch", "peft")
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LLAMA2_7B = dict(layers=32, hidden=4096, intermediate=11008, vocab=32000, heads=32)
SMALL = dict(layers=2, hidden=128, intermediate=344, vocab=512, heads=4)
GiB = 1 << 30


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(dims: dict[str, int], device: torch.device, seed: int) -> Any:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=dims["vocab"],
        hidden_size=dims["hidden"],
        intermediate_size=dims["intermediate"],
        num_hidden_layers=dims["layers"],
        num_attention_heads=dims["heads"],
        num_key_value_heads=dims.get("kv", dims["heads"]),
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model


def token_data(samples: int, seq: int, vocab: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (samples, seq), generator=gen)


def warm_up(model: Any, batch: torch.Tensor) -> None:
    """One untimed forward/backward (activation gradients only) so that every configuration starts warm."""
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, o: o.detach().requires_grad_(True))
    try:
        model(input_ids=batch).logits.float().mean().backward()
    finally:
        hook.remove()
    if batch.is_cuda:
        torch.cuda.synchronize(batch.device)


def _svdtool(args: argparse.Namespace, model: Any, ids: torch.Tensor, device: torch.device) -> dict[str, Any]:
    from svdtool.calibration.encode import Encoded
    from svdtool.gradients.compute import ComputeSettings, compute_gradients, micro_batches
    from svdtool.gradients.model import find_targets
    from svdtool.methods import InitOptions
    from svdtool.methods.lora_ga import lora_ga, reducer

    sketch = args.worker.startswith("svdtool-sketch")
    r = args.rank
    opts = InitOptions(rank=r, alpha=args.alpha, extra={"svd": "randomized", "seed": 0})
    targets = find_targets(model, LINEAR)
    items = [Encoded(i, row.tolist(), row.tolist()) for i, row in enumerate(ids)]
    parts = args.worker.split(":")
    micro_size = int(parts[1]) if len(parts) > 1 else (args.sketch_micro_batch if sketch else args.micro_batch)
    micro_size = micro_size or args.batch_size
    groups = int(parts[2]) if len(parts) > 2 else (args.sketch_groups if sketch else args.groups)
    micro = micro_batches(items, args.batch_size, micro_size, 0)
    settings = ComputeSettings(
        mode="sketch" if sketch else "exact",
        groups=groups or None,
        sketch_rank=2 * r,
    )
    sync(device)
    torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
    peaks: list[float] = []
    seconds: list[float] = []
    if device.type == "cuda":  # record the peak of every pass (each group's)
        import svdtool.gradients.compute as compute_mod

        inner = compute_mod.run_pass

        def run_pass(*a: Any, **k: Any) -> Any:
            sync(device)
            t = time.perf_counter()
            out = inner(*a, **k)
            sync(device)
            seconds.append(round(time.perf_counter() - t, 2))
            peaks.append(round(torch.cuda.max_memory_allocated(device) / GiB, 2))
            return out

        compute_mod.run_pass = run_pass  # type: ignore[assignment]
    t0 = time.perf_counter()
    done = compute_gradients(model, targets, micro, settings, device, reduce=None if sketch else reducer(r, opts.extra))
    sync(device)
    t1 = time.perf_counter()
    for t in targets:
        w = t.module.weight
        res = lora_ga(w.data.float(), opts, gradient=done.results[t.name])
        w.data.copy_(res.residual)  # W_res in the model dtype, in place
    sync(device)
    t2 = time.perf_counter()
    return {
        "grad_s": t1 - t0,
        "init_s": t2 - t1,
        "total_s": t2 - t0,
        "groups": done.groups,
        "micro_batch": micro_size,
        "tokens_per_s": done.tokens_per_second,
        "pass_peaks_gib": peaks,
        "pass_seconds": seconds,
        "cuda_graphs": dataclasses.asdict(done.graph_stats),
    }


def _peft(args: argparse.Namespace, model: Any, ids: torch.Tensor, device: torch.device) -> dict[str, Any]:
    from peft import LoraConfig, LoraGAConfig, get_peft_model, preprocess_loraga

    cfg = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        target_modules=LINEAR,
        init_lora_weights="lora_ga",
        lora_ga_config=LoraGAConfig(),
    )
    bs = args.batch_size

    def train_step() -> None:
        for start in range(0, ids.shape[0], bs):
            batch = ids[start : start + bs].to(device)
            model(input_ids=batch, labels=batch).loss.backward()

    sync(device)
    torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
    t0 = time.perf_counter()
    preprocess_loraga(model, cfg, train_step)
    sync(device)
    t1 = time.perf_counter()
    get_peft_model(model, cfg)
    sync(device)
    t2 = time.perf_counter()
    return {"grad_s": t1 - t0, "init_s": t2 - t1, "total_s": t2 - t0, "groups": 1, "micro_batch": bs}


def _floor(args: argparse.Namespace, model: Any, ids: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """Forward + activation backward only; ``floor:M`` replays CUDA graphs like svdtool, ``floor-eager:M`` not."""
    from svdtool.calibration.encode import Encoded
    from svdtool.gradients.compute import micro_batches
    from svdtool.gradients.graphed import GraphStats, StepRunner, usable
    from svdtool.gradients.passes import loss, to_device

    micro_size = int(args.worker.partition(":")[2] or args.batch_size)
    items = [Encoded(i, row.tolist(), row.tolist()) for i, row in enumerate(ids)]
    micro = micro_batches(items, args.batch_size, micro_size, 0)
    hook = model.get_input_embeddings().register_forward_hook(lambda m, a, o: o.detach().requires_grad_(True))
    stats = GraphStats()
    runner = StepRunner(device, usable(device, False) and not args.worker.startswith("floor-eager"), stats)
    sync(device)
    torch.cuda.reset_peak_memory_stats(device) if device.type == "cuda" else None
    t0 = time.perf_counter()
    for mb in micro:
        runner.run(to_device(mb, device), lambda io: loss(model, io).backward())
    sync(device)
    t = time.perf_counter() - t0
    runner.close()
    hook.remove()
    return {
        "grad_s": t,
        "init_s": 0.0,
        "total_s": t,
        "groups": 1,
        "micro_batch": micro_size,
        "cuda_graphs": dataclasses.asdict(stats),
    }


def worker(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.small else "cpu")
    dims = dict(SMALL if args.small else LLAMA2_7B)
    if args.layers:
        dims["layers"] = args.layers
    t0 = time.perf_counter()
    model = build_model(dims, device, seed=0)
    ids = token_data(args.samples, args.seq, dims["vocab"], seed=1)
    build_s = time.perf_counter() - t0
    warm_up(model, ids[: args.batch_size].to(device))
    run = _peft if args.worker == "peft" else _floor if args.worker.startswith("floor") else _svdtool
    out = run(args, model, ids, device)
    out["build_s"] = build_s
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / GiB
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / GiB  # what the device really gave
    print("RESULT " + json.dumps(out), flush=True)


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "peft"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "?"
    import svdtool

    out["svdtool"] = svdtool.__version__
    if torch.version.cuda:
        out["cuda"] = str(torch.version.cuda)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny shapes on the CPU (a smoke test)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--layers", type=int, default=None, help="override the layer count")
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--micro-batch", type=int, default=None, help="svdtool exact micro-batch (default: batch size)")
    ap.add_argument("--sketch-micro-batch", type=int, default=1, help="svdtool sketch micro-batch")
    ap.add_argument("--groups", type=int, default=None, help="svdtool exact layer groups (default: auto)")
    ap.add_argument("--sketch-groups", type=int, default=1)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.samples = args.samples or (8 if args.small else 128)
    args.seq = args.seq or (32 if args.small else 1024)
    if args.worker:
        worker(args)
        return
    passthrough = _drop_values(sys.argv[1:], ("--configs", "--json"))
    device = "cpu" if args.small or not torch.cuda.is_available() else torch.cuda.get_device_name(0)
    print(f"device: {device}", flush=True)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()), flush=True)
    print(
        f"model: {'small' if args.small else 'Llama-2-7B'} shapes, {args.layers or ''} layers; "
        f"{args.samples} samples × {args.seq} tokens, batch {args.batch_size}, r={args.rank}, all 7 linear types",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    for name in args.configs.split(","):
        cmd = [sys.executable, __file__, "--worker", name, *passthrough]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines()[::-1] if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{name}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}", flush=True)
            continue
        results[name] = json.loads(line[len("RESULT ") :])
        print(f"{name}: {results[name]}", flush=True)
    _table(results)
    if args.json:
        args.json.write_text(json.dumps({"device": device, "versions": versions(), "results": results}, indent=2))


def _drop_values(argv: list[str], names: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in names:
            skip = True
            continue
        if any(a.startswith(n + "=") for n in names):
            continue
        out.append(a)
    return out


def _table(results: dict[str, dict[str, Any]]) -> None:
    peft = results.get("peft")
    print()
    head = f"{'config':18} {'grad s':>8} {'init s':>8} {'total s':>8} {'peak GiB':>9} {'reserved':>9}"
    print(f"{head} {'× PEFT time':>12} {'× PEFT mem':>11}")
    for name, r in results.items():
        peak = r.get("peak_gib")
        t_ratio = f"{r['total_s'] / peft['total_s']:.2f}" if peft else "-"
        m_ratio = f"{peak / peft['peak_gib']:.2f}" if peft and peak and peft.get("peak_gib") else "-"
        reserved = r.get("peak_reserved_gib")
        print(
            f"{name:18} {r['grad_s']:8.2f} {r['init_s']:8.2f} {r['total_s']:8.2f} "
            f"{(f'{peak:.1f}' if peak else '-'):>9} {(f'{reserved:.1f}' if reserved else '-'):>9} "
            f"{t_ratio:>12} {m_ratio:>11}"
        )
    print("targets: exact ≤ 1.00× PEFT time and memory; sketch ≤ 0.60× both")


if __name__ == "__main__":
    main()
