"""EVA: PEFT's incremental-PCA components against svdtool's exact ones, per layer (principal-angle cosines).

Both see the same batches (svdtool's calibration encoding, masks and batch size); PEFT's
``get_eva_state_dict`` cycles them until its components converge (τ = 0.99), svdtool takes the exact
centred covariance of one pass (``--max-batches`` caps PEFT's loop: past it, every layer counts as
converged and PEFT returns the components it has). For every target the script reports the cosines of
the principal angles between the two row spaces at k = min(k_PEFT, k_svdtool), and |cos| of the first
component pair.

    python scripts/eva_vs_peft.py MODEL_DIR --calib docs.jsonl [--targets q_proj,v_proj,down_proj] [--out a.json]

Needs peft ≥ 0.20 (the label mask). Runs on the CPU; SmolLM2-135M with 24 samples takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    import torch
    from peft import LoraConfig
    from peft.tuners.lora.config import EvaConfig
    from peft.tuners.lora.eva import SVDHook, get_eva_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from svdtool import naming
    from svdtool.calibration import CalibRequest, prepare_calibration
    from svdtool.calibration.encode import collate, pad_id
    from svdtool.commands.init_statistics import activation_statistics
    from svdtool.statistics import ActivationRequest

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--calib", required=True)
    p.add_argument("--samples", type=int, default=24)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--rho", type=float, default=2.0)
    p.add_argument("--targets", default="q_proj,v_proj,down_proj")
    p.add_argument("--max-batches", type=int, default=200, help="stop PEFT's loop after this many batches")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    calib = CalibRequest(args.calib, samples=args.samples, max_length=args.max_length, batch_size=args.batch_size)
    targets = naming.parse_targets(args.targets)
    req = ActivationRequest(args.model, calib, targets=targets, device="cpu")
    t0 = time.perf_counter()
    ours, _ = activation_statistics(req, "centred", rank=args.rank, extra={"eva_rho": args.rho})
    ours_s = time.perf_counter() - t0

    tok = AutoTokenizer.from_pretrained(args.model)
    items = prepare_calibration(calib, tok).items
    loader = [collate(items[i : i + args.batch_size], pad_id(tok)) for i in range(0, len(items), args.batch_size)]
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    cfg = LoraConfig(r=args.rank, target_modules=targets, init_lora_weights="eva", eva_config=EvaConfig(rho=args.rho))
    seen = [0]

    def forward(m: object, inputs: dict) -> object:
        """PEFT's forward_fn; past --max-batches it marks every unconverged layer converged, so the loop ends
        with the components PEFT has at that point (its loader is otherwise cycled without a cap)."""
        seen[0] += 1
        if seen[0] > args.max_batches:
            for mod in model.modules():
                for h in mod._forward_hooks.values():
                    if isinstance(h, SVDHook):
                        h.converged[:] = True
            return None
        return model(**inputs)

    t0 = time.perf_counter()
    theirs = get_eva_state_dict(model, loader, cfg, forward_fn=forward, show_progress_bar=False)
    peft_s = time.perf_counter() - t0

    rows = []
    for name, comps in theirs.items():
        mine = ours[name + ".weight"]
        k = min(comps.shape[0], mine.rank or 0)
        if k == 0:
            rows.append({"layer": name, "k_peft": comps.shape[0], "k_svdtool": mine.rank, "cosines": []})
            continue
        a = torch.linalg.qr(comps[:k].double().T).Q  # (in, k)
        b = mine.vectors[:k].double().T
        cos = torch.linalg.svdvals(a.T @ b).clamp(max=1.0)
        rows.append(
            {
                "layer": name,
                "k_peft": int(comps.shape[0]),
                "k_svdtool": int(mine.rank or 0),
                "cosines": [round(float(c), 6) for c in cos],
                "first_component_cos": round(float((comps[0].double() @ mine.vectors[0]).abs()), 6),
            }
        )
    means = [sum(r["cosines"]) / len(r["cosines"]) for r in rows if r["cosines"]]
    mins = [min(r["cosines"]) for r in rows if r["cosines"]]
    summary = {
        "model": args.model,
        "calib": args.calib,
        "samples": len(items),
        "tokens_per_batch": args.max_length * args.batch_size,
        "rank": args.rank,
        "rho": args.rho,
        "targets": args.targets,
        "layers": len(rows),
        "mean_cos": round(sum(means) / len(means), 6),
        "worst_layer_mean_cos": round(min(means), 6),
        "smallest_cos": round(min(mins), 6),
        "median_first_component_cos": sorted(r["first_component_cos"] for r in rows if r["cosines"])[len(means) // 2],
        "svdtool_seconds": round(ours_s, 2),
        "peft_seconds": round(peft_s, 2),
        "peft_batches": min(seen[0], args.max_batches),
        "peft_capped": seen[0] > args.max_batches,
        "versions": {"torch": torch.__version__, "peft": __import__("peft").__version__},
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "layers": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
