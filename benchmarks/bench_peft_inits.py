"""Benchmark `svdtool init` for OLoRA (and MiCA, orthogonal) against PEFT's own inits, end to end.

    python benchmarks/bench_peft_inits.py [--dir /tmp/llama7b] [--json out.json]
    python benchmarks/bench_peft_inits.py --small        # tiny shapes on the CPU, to check the script

Llama-2-7B shapes (bf16, random N(0, 0.02²) weights from make_checkpoint.py), all 7 linear types, r = 16.
Each run is a fresh process (no warm CUDA context or allocator shared between contenders), page cache warm:

* svdtool: `run_init` (read, init, write residual or adapter, sidecar, card);
* PEFT olora: load, `get_peft_model(init_lora_weights="olora")`, save the adapter with init_lora_weights=True,
  unload, save the residual (the workflow of PEFT's examples/olora_finetuning, with the residual saved);
* PEFT mica / orthogonal: load, `get_peft_model`, save the adapter (the base is untouched).

The target of issue 15 is OLoRA ≥ 3× PEFT end to end. Not run on a GPU by the author of this script.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from make_checkpoint import LLAMA2_7B, SMALL, make_llama_checkpoint  # noqa: E402

RANK = 16
METHODS = ("olora", "mica", "orthogonal")


def run_one(who: str, method: str, ckpt: Path, out: Path, device: str) -> float:
    """One contender, in this (fresh) process: seconds end to end."""
    import torch

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    if who == "svdtool":
        from svdtool.commands.init import InitRequest, run_init

        run_init(InitRequest(model=str(ckpt), method=method, rank=RANK, out=out, device=device))
    else:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.bfloat16, device_map=device)
        cfg = LoraConfig(r=RANK, lora_alpha=RANK, target_modules="all-linear", init_lora_weights=method)
        pm = get_peft_model(model, cfg)
        if method == "olora":
            pm.peft_config["default"].init_lora_weights = True
        pm.save_pretrained(str(out / f"{method}_init"))
        if method == "olora":
            pm.unload().save_pretrained(str(out))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("/tmp/bench-llama7b"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-peft-inits"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--one", nargs=2, metavar=("WHO", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    shape = SMALL if args.small else LLAMA2_7B
    ckpt = make_llama_checkpoint(args.dir.with_name(args.dir.name + ("-small" if args.small else "")), **shape)
    if args.one:
        who, method = args.one
        print(json.dumps({"seconds": run_one(who, method, ckpt, args.out / f"{who}-{method}", device)}))
        return
    results: dict[str, dict[str, float]] = {}
    for method in METHODS:
        for who in ("svdtool", "peft"):
            cmd = [sys.executable, __file__, "--dir", str(args.dir), "--out", str(args.out), "--device", device,
                   "--one", who, method] + (["--small"] if args.small else [])  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results.setdefault(method, {})[who] = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
        r = results[method]
        r["speedup"] = r["peft"] / r["svdtool"]
        print(f"{method:11s} svdtool {r['svdtool']:7.2f} s   PEFT {r['peft']:7.2f} s   {r['speedup']:.1f}×", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": device, "shape": shape, "rank": RANK, "results": results}, indent=2))


if __name__ == "__main__":
    main()
