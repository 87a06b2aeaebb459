"""Sketch mode vs exact mode on SmolLM2-135M's real gradients, per layer (CPU, a minute or two).

    python benchmarks/sketch_accuracy.py [--samples 16] [--max-length 64] [--rank 8] [--json out.json]

Estimates the exact float32 gradients of q/k/v/o/gate/up/down on a natural-text calibration set (stdlib
docstrings as prompt/response pairs, the same on every machine), then the single-pass sketches with the same
data, and reports for every matrix and k ∈ {r, 2r}: the smallest cosine of the principal angles between the
exact and sketched top-k singular subspaces (left and right), and the share of G's top-k energy the sketched
subspaces keep. Also the same numbers for the reference's own randomized SVD (svd_lowrank q = 4r, niter = 4)
of the exact G, which power-iterates over G and is the accuracy LoRA-GA's default init has.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from svdtool import naming  # noqa: E402
from svdtool.calibration import CalibRequest  # noqa: E402
from svdtool.gradients import GradientRequest, estimate_gradients  # noqa: E402
from svdtool.linalg.sketch import LowRankGradient, agreement  # noqa: E402
from svdtool.loading.packaged import packaged_model  # noqa: E402
from svdtool.methods.lora_ga import seeded_svd_lowrank  # noqa: E402
from tests.lora_ga_support import smollm2_calibration  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--oversample", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--resample",
        action="store_true",
        help="also compare exact gradients of two different samples (--seed 0 vs 1) of the same data: the "
        "statistical resolution of a top-k subspace, for scale",
    )
    args = ap.parse_args()
    r = args.rank
    model = packaged_model("smollm2")
    with tempfile.TemporaryDirectory() as tmp:
        calib_file = smollm2_calibration(Path(tmp) / "docs.jsonl")
        calib = CalibRequest(str(calib_file), samples=args.samples, max_length=args.max_length)
        base = dict(model=str(model), calib=calib, device="cpu")
        exact = estimate_gradients(GradientRequest(**base))  # type: ignore[arg-type]
        sketch = estimate_gradients(
            GradientRequest(**base, mode="sketch", sketch_rank=2 * r, sketch_oversample=args.oversample)  # type: ignore[arg-type]
        )
        other = None
        if args.resample:
            calib2 = CalibRequest(str(calib_file), samples=args.samples, max_length=args.max_length, seed=1)
            other = estimate_gradients(GradientRequest(str(model), calib2, device="cpu"))
    rows = []
    for name, g in exact.grads.items():
        u, s, v, _ = seeded_svd_lowrank(g.float(), min(4 * r, *g.shape), 4, 0, r)
        ref = LowRankGradient(u, s, v.T, "randomized")
        row: dict[str, object] = {"name": name, "type": naming.module_type(name), "layer": naming.layer_index(name)}
        for k in (r, 2 * r):
            cu, cv, e = agreement(g, sketch.factors[name], k)
            ru, rv, re_ = agreement(g, ref, k)
            row.update({f"sketch_cos_{k}": min(cu, cv), f"sketch_energy_{k}": e, f"lowrank_cos_{k}": min(ru, rv)})
            row[f"lowrank_energy_{k}"] = re_
            if other is not None:
                o = other.grads[name]
                uo, so, vo, _ = seeded_svd_lowrank(o.float(), min(4 * r, *o.shape), 4, 0, r)
                ou, ov, _ = agreement(g, LowRankGradient(uo, so, vo.T), k)
                row[f"resample_cos_{k}"] = min(ou, ov)
        rows.append(row)
    print(f"SmolLM2-135M, {exact.calibration.used} samples, {exact.calibration.tokens} tokens; r = {r}; sketch k = "
          f"{sketch.info.sketch['range']}, l = {sketch.info.sketch['corange']}")  # fmt: skip
    print(f"{'matrix':42} {'cos r':>7} {'cos 2r':>7} {'E r':>7} {'E 2r':>7}   (svd_lowrank: cos r, cos 2r)")
    for row in rows:
        print(
            f"{row['name']:42} {row[f'sketch_cos_{r}']:7.3f} {row[f'sketch_cos_{2 * r}']:7.3f} "
            f"{row[f'sketch_energy_{r}']:7.4f} {row[f'sketch_energy_{2 * r}']:7.4f}   "
            f"{row[f'lowrank_cos_{r}']:.3f}, {row[f'lowrank_cos_{2 * r}']:.3f}"
        )
    for k in (r, 2 * r):
        cos = [float(row[f"sketch_cos_{k}"]) for row in rows]  # type: ignore[arg-type]
        en = [float(row[f"sketch_energy_{k}"]) for row in rows]  # type: ignore[arg-type]
        print(
            f"k={k}: min cosine ≥ 0.99 in {sum(c >= 0.99 for c in cos)}/{len(cos)} matrices "
            f"(median {statistics.median(cos):.4f}, min {min(cos):.3f}); energy kept: median "
            f"{statistics.median(en):.5f}, min {min(en):.4f}"
        )
        if other is not None:
            rs = [float(row[f"resample_cos_{k}"]) for row in rows]  # type: ignore[arg-type]
            print(
                f"      another sample of the data (exact both times): min cosine ≥ 0.99 in "
                f"{sum(c >= 0.99 for c in rs)}/{len(rs)} (median {statistics.median(rs):.4f}, min {min(rs):.3f})"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
