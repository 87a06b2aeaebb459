"""PEFT's own OLoRA, CorDA, EVA or LoftQ init as a user runs it, in its own process: the anchor of
bench_inits_vs_peft.py.

    python benchmarks/peft_inits.py olora MODEL_DIR OUT_DIR [--rank 16]
    python benchmarks/peft_inits.py corda MODEL_DIR OUT_DIR --calib CALIB.jsonl [--samples 256 --max-length 2048]
    python benchmarks/peft_inits.py eva   MODEL_DIR OUT_DIR --calib CALIB.jsonl [--batch-size 4 --max-batches 160]
    python benchmarks/peft_inits.py loftq MODEL_DIR OUT_DIR [--rank 64 --iters 5]

The script of PEFT's examples (``examples/{olora,corda,loftq}_finetuning``, the EVA docs): load the model (bf16
on CUDA, float32 on a CPU), tokenize, run PEFT's init, save the adapter with ``init_lora_weights=True`` and, where
the base changes (OLoRA, CorDA, LoftQ), unload and save the base. Token sequences are svdtool's for plain text:
the tokenizer's ids with special tokens, cut to --max-length, in file order; CorDA runs one sample per forward
(PEFT's hook needs batch 1), EVA right-padded batches with attention mask and labels (−100 on pads).

* EVA: ``get_peft_model`` then ``initialize_lora_eva_weights(peft_model, loader)``, whose ``get_eva_state_dict``
  cycles the loader until every layer's components converge, with no cap;
  past ``--max-batches`` batches every layer is marked converged, so the loop ends with what PEFT has then (the
  JSON says whether the cap was hit).
* LoftQ: α = r, the only α PEFT's ``loftq_init`` is right for (peft#1982). ``loftq_init`` hard-codes CUDA/XPU;
  on a machine without CUDA (``--smoke``) its own source runs with the compute device replaced by the CPU, as
  svdtool's tests do.

Prints one ``RESULT {json}`` line: the phase times (seconds) and the peak allocated device memory.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from user_script import Laps, pad_batches, token_ids  # noqa: E402

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def loftq_on_cpu() -> None:
    """Make PEFT's LoRA layers call ``loftq_init`` with the CPU as its compute device (no CUDA here)."""
    from peft.tuners.lora import layer
    from peft.utils import loftq_utils

    src = textwrap.dedent(inspect.getsource(loftq_utils.loftq_init))
    line = 'compute_device = "xpu" if is_xpu_available() else "cuda"'
    if src.count(line) != 1:
        raise SystemExit("PEFT's loftq_init changed: cannot run it on the CPU")
    scope = dict(vars(loftq_utils))
    exec(compile(src.replace(line, 'compute_device = "cpu"'), "<peft loftq_init on cpu>", "exec"), scope)
    layer.loftq_init = scope["loftq_init"]  # type: ignore[attr-defined]


def record_damp(model: Any) -> dict[str, float]:
    """PEFT's ridge d per target, filled as ``preprocess_corda`` runs: d = 0.01·2^(k−1) after k float32 ``inv``
    calls in ``collect_eigens_for_layer`` (it keeps d to itself). Counting adds no work to PEFT's."""
    from peft.tuners.lora import corda

    names = {id(m): n for n, m in model.named_modules()}
    damp: dict[str, float] = {}
    inner, inv = corda.collect_eigens_for_layer, torch.linalg.inv

    def counted(linear: Any, config: Any) -> Any:
        calls = [0]

        def counting_inv(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            return inv(*args, **kwargs)

        torch.linalg.inv = counting_inv
        try:
            return inner(linear, config)
        finally:
            torch.linalg.inv = inv
            damp[names.get(id(linear), "?")] = 0.01 * 2 ** (calls[0] - 1)

    corda.collect_eigens_for_layer = counted  # type: ignore[assignment]
    return damp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("method", choices=["olora", "corda", "eva", "loftq"])
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--calib")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=None, help="default: r")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--rho", type=float, default=2.0)
    ap.add_argument("--max-batches", type=int, default=160)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    alpha = args.alpha if args.alpha is not None else float(args.rank)
    info: dict[str, Any] = {}

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    laps = Laps(device, T0)
    lap = laps.lap
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, device_map=str(device)).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    lap("load")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seqs: list[list[int]] = []
    if args.method in ("corda", "eva"):
        seqs = token_ids(tok, args.calib, args.samples, args.max_length)
        info["tokens"] = sum(len(s) for s in seqs)
        lap("tokenize")
    common = dict(r=args.rank, lora_alpha=alpha, target_modules=LINEAR)
    if args.method == "olora":
        pm = get_peft_model(model, LoraConfig(init_lora_weights="olora", **common))  # type: ignore[arg-type]
        lap("init")
    elif args.method == "loftq":
        from peft import LoftQConfig

        if device.type != "cuda":
            loftq_on_cpu()
        loftq = LoftQConfig(loftq_bits=4, loftq_iter=args.iters)
        cfg = LoraConfig(init_lora_weights="loftq", loftq_config=loftq, **common)  # type: ignore[arg-type]
        pm = get_peft_model(model, cfg)
        lap("init")
    elif args.method == "corda":
        from peft.tuners.lora.config import CordaConfig
        from peft.tuners.lora.corda import preprocess_corda

        cfg = LoraConfig(init_lora_weights="corda", corda_config=CordaConfig(corda_method="ipm"), **common)  # type: ignore[arg-type]

        @torch.no_grad()
        def run_model() -> None:
            for s in seqs:  # PEFT's documented loop: one sample per forward
                model(input_ids=torch.tensor([s], device=device))

        info["damp"] = record_damp(model)
        preprocess_corda(model, cfg, run_model=run_model)
        lap("statistics")
        pm = get_peft_model(model, cfg)
        lap("init")
    else:  # eva
        from peft import EvaConfig, initialize_lora_eva_weights
        from peft.tuners.lora.eva import SVDHook

        cfg = LoraConfig(init_lora_weights="eva", eva_config=EvaConfig(rho=args.rho), **common)  # type: ignore[arg-type]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        loader = pad_batches(seqs, args.batch_size, pad)
        seen = [0]

        def forward(m: Any, inputs: dict[str, torch.Tensor]) -> Any:
            seen[0] += 1
            if seen[0] > args.max_batches:  # cap PEFT's uncapped cycle: take what it has now
                for mod in m.modules():
                    for h in mod._forward_hooks.values():
                        if isinstance(h, SVDHook):
                            h.converged[:] = True
                return None
            return m(**inputs)

        # PEFT's documented route: get_eva_state_dict runs on the PeftModel, so its keys match the LoRA layers (one
        # computed on the bare model lacks "base_model.model.": PEFT then warns and keeps random A everywhere)
        pm = get_peft_model(model, cfg, low_cpu_mem_usage=True)
        lap("init")
        initialize_lora_eva_weights(pm, loader, forward_fn=forward, show_progress_bar=False)
        info.update(batches=min(seen[0], args.max_batches), capped=seen[0] > args.max_batches, loader=len(loader))
        lap("statistics")
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    pm.peft_config["default"].init_lora_weights = True  # the saved factors are the init (PEFT's examples)
    pm.save_pretrained(str(out / f"{args.method}_init"))
    if args.method != "eva":  # the base changed: save it (the residual, or LoftQ's dequantised base)
        pm.unload().save_pretrained(str(out))
        tok.save_pretrained(str(out))
    lap("write")
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    print("RESULT " + json.dumps({"phases": laps.phases, "peak_allocated": peak, **info}), flush=True)


if __name__ == "__main__":
    main()
