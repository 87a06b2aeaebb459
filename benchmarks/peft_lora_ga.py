"""PEFT's LoRA-GA as a user runs it, end to end, in its own process: the anchor of bench_e2e.py.

    python benchmarks/peft_lora_ga.py MODEL_DIR CALIB.jsonl OUT_DIR [--rank 8 --alpha 16 --samples 128 ...]
    python benchmarks/peft_lora_ga.py MODEL_DIR CALIB.jsonl OUT_DIR --floor    # forward + activation backward only

The script a PEFT user writes (PEFT's LoRA-GA docs): load the model and tokenizer, tokenize the texts,
``preprocess_loraga(model, config, train_step)`` with a train_step that runs the batches forward and
backward, ``get_peft_model``, then save the adapter and the base model (whose target weights LoRA-GA has
offset to W − s·B·A) with ``save_pretrained``. Token sequences are exactly svdtool's for plain text: the
tokenizer's ids with special tokens, cut to --max-length, loss on every token, batches in file order.

``--floor`` runs the same load, tokenization and batches, but only forward + the activation backward
(no weight gradient at all): the least any estimator that back-propagates must do, on the same data.

Prints one ``RESULT {json}`` line with the phase times (seconds, since process start where named) and the
peak device memory.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from user_script import Laps, pad_batches, token_ids  # noqa: E402

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("calib")
    ap.add_argument("out")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--floor", action="store_true")
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not args.floor:
        from peft import LoraConfig, LoraGAConfig, get_peft_model, preprocess_loraga

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    laps = Laps(device, T0)
    lap, phases = laps.lap, laps.phases
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, device_map=str(device))
    model.eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    lap("load")
    seqs = token_ids(tok, args.calib, args.samples, args.max_length)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batches = pad_batches(seqs, args.batch_size, pad)
    lap("tokenize")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if args.floor:
        model.requires_grad_(False)
        hook = model.get_input_embeddings().register_forward_hook(lambda m, a, o: o.detach().requires_grad_(True))
        for b in batches:
            model(**{k: v.to(device) for k, v in b.items()}).loss.backward()
        hook.remove()
        lap("gradient")
    else:
        config = LoraConfig(
            r=args.rank,
            lora_alpha=args.alpha,
            target_modules=LINEAR,
            init_lora_weights="lora_ga",
            lora_ga_config=LoraGAConfig(),
        )

        def train_step() -> None:
            for b in batches:
                model(**{k: v.to(device) for k, v in b.items()}).loss.backward()

        preprocess_loraga(model, config, train_step)
        lap("gradient")
        peft_model = get_peft_model(model, config)
        lap("init")
        out = Path(args.out)
        if out.exists():
            shutil.rmtree(out)
        peft_model.save_pretrained(str(out / "adapter"))
        peft_model.unload().save_pretrained(str(out / "base"))
        tok.save_pretrained(str(out / "base"))
        lap("write")
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    print("RESULT " + json.dumps({"phases": phases, "peak_allocated": peak}), flush=True)


if __name__ == "__main__":
    main()
