"""OLoRA, CorDA, EVA and LoftQ (+ QPiSSA) as users run them: ``svdtool init`` beside PEFT's own init, each in
its own fresh process, on the same checkpoint and the same token sequences; outputs compared, not just timed.

    python benchmarks/bench_inits_vs_peft.py --work /tmp/ivp --tokenizer TOKDIR --configs olora,loftq --json a.json
    python benchmarks/bench_inits_vs_peft.py --work /tmp/ivp --tokenizer TOKDIR --configs corda,eva --json b.json
    python benchmarks/bench_inits_vs_peft.py --work /tmp/ivp --tokenizer TOKDIR --smoke     # CPU, tiny model

Every config (``CONFIGS``) has the issue's comparison on Llama-2-7B shapes (bf16 random N(0, 0.02²) weights and
SmolLM2's tokenizer, ``make_checkpoint.py``), all 7 linear types. Where PEFT's side would not fit a few minutes of
an H200, the model has fewer decoder layers of the same shapes (both tools see the same folder, and both scale
linearly in layers); the layer count and the estimate behind it are in the table and the JSON. Nothing else
changes between the two sides.

* svdtool: ``svdtool init MODEL --method M …`` (through ``svdtool_peak.py``, which only adds the CUDA peak).
* PEFT: ``peft_inits.py M MODEL OUT``: load, PEFT's init, save adapter (and the base where it changes).
* Agreement, per target: OLoRA and CorDA ‖s·B·A − (s·B·A)_PEFT‖_F / ‖(s·B·A)_PEFT‖_F; EVA the ranks and the
  cosines of the principal angles between PEFT's components and svdtool's exact ones; LoftQ and QPiSSA
  ‖W − (Q(base) + s·B·A)‖_F / ‖W − Q(W)‖_F with Q the bit-exact NF4 load (svdtool.quant.nf4), for both tools.

Calibration text: Python's documentation topics (``bench_e2e.calib_texts``), windows of 12,000 characters, so
every record fills 2048 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_e2e import DevicePoll, calib_texts, versions  # noqa: E402
from make_checkpoint import LLAMA2_7B, SMALL, make_llama_checkpoint  # noqa: E402

GiB = 1 << 30


@dataclass(frozen=True)
class Config:
    method: str  # svdtool's --method; PEFT's side runs the same name (qpissa: none)
    layers: int  # decoder layers of the checkpoint (32 = the whole Llama-2-7B)
    rank: int
    samples: int = 0  # calibration records (0: no data)
    max_length: int = 2048
    batch_size: int = 1
    iters: int = 5  # LoftQ/QPiSSA alternations
    max_batches: int = 160  # EVA: cap of PEFT's otherwise uncapped loader cycle
    peft: bool = True


CONFIGS: dict[str, Config] = {
    "olora": Config("olora", layers=32, rank=16),
    "corda": Config("corda", layers=4, rank=16, samples=256),  # batch 1, as PEFT's hook needs
    "eva": Config("eva", layers=4, rank=16, samples=64, batch_size=4),
    "loftq": Config("loftq", layers=1, rank=64),
    "qpissa": Config("qpissa", layers=1, rank=64, peft=False),  # in no library: the error ratio only
}
SMOKE = dict(layers=2, samples=6, max_length=96, max_batches=6)


def estimate(c: Config) -> dict[str, Any]:
    """PEFT's work for this config, counted: flops of its dominant kernels and the seconds they take at the rates
    measured on an H100/H200, always for Llama-2-7B's shapes (peft_inits2.md §9: a full float32 SVD of 4096²
    1.03 s; float32 GEMM without TF32 ≈ 50 TFLOP/s; float32 Householder QR ≈ 7 TFLOP/s), per decoder layer ×
    layers. Imports, loading and saving (≈ 15–30 s per process on the whole 7B) come on top."""
    h, f = LLAMA2_7B["hidden"], LLAMA2_7B["intermediate"]
    shapes = [(h, h)] * 4 + [(f, h)] * 2 + [(h, f)]  # (out, in)
    svd = sum(1.03 * (4 * max(m, n) * min(m, n) ** 2 + 8 * min(m, n) ** 3) / (12 * h**3) for m, n in shapes)
    gemm, qr = 50e12, 7e12
    if c.method == "olora":
        flops = sum(2 * max(m, n) * min(m, n) ** 2 - 2 * min(m, n) ** 3 / 3 for m, n in shapes)
        sec, what = flops / qr, "Householder QR of every W (float32)"
    elif c.method == "corda":
        flops = c.samples * c.max_length * 2 * sum(n * n for _, n in shapes)
        sec, what = flops / gemm + svd, "XᵀX per target per sample (float32) + full SVD of W·C per target"
    elif c.method == "eva":
        q, toks = 2 * round(2 * c.rank), c.batch_size * c.max_length  # svd_lowrank(q = 2k, niter = 4), k = r·ρ
        flops = c.max_batches * 10 * 2 * toks * q * (2 * h + h + f)  # 4 distinct inputs per layer
        # launch-bound: the toy of §1 took 5.4 ms per hooked input per batch (49.5 s, 286 batches × 32 hooks)
        sec = flops / gemm + c.max_batches * 4 * 5.4e-3
        what = f"incremental PCA per hooked input per batch, up to the cap of {c.max_batches} batches"
    elif c.method == "loftq":
        flops, sec, what = 0.0, c.iters * svd, f"{c.iters} full float32 SVDs per W (+ a host round trip each)"
    else:
        return {"note": "not in PEFT"}
    return {"peft_seconds_per_layer": round(sec, 2), "peft_seconds": round(sec * c.layers, 1), "work": what,
            "tflop_per_layer": round(flops / 1e12, 2)}  # fmt: skip


def prepare(work: Path, tokenizer: str, c: Config, smoke: bool) -> tuple[Path, Path | None]:
    dims = dict(SMALL if smoke else LLAMA2_7B)
    dims.pop("vocab")
    dims["layers"] = c.layers
    model = make_llama_checkpoint(work / f"{'small' if smoke else 'llama7b'}-{c.layers}l", tokenizer=tokenizer, **dims)
    if not c.samples:
        return model, None
    calib = work / f"calib-{c.samples}.jsonl"
    if not calib.is_file():  # exactly `samples` records: both tools take all of them, in file order
        texts = calib_texts(c.samples, chars=12000, stride=1800)
        calib.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return model, calib


def commands(c: Config, model: Path, calib: Path | None, out: Path) -> tuple[list[str], list[str]]:
    """(svdtool's command line, PEFT's script's)."""
    ours = [sys.executable, str(HERE / "svdtool_peak.py"), "init", str(model), "--method", c.method]
    ours += ["-r", str(c.rank), "--out", str(out / "svdtool"), "--overwrite", "--format", "json"]
    theirs = [sys.executable, str(HERE / "peft_inits.py"), c.method, str(model), str(out / "peft")]
    theirs += ["--rank", str(c.rank)]
    if calib is not None:
        data = ["--samples", str(c.samples), "--max-length", str(c.max_length), "--batch-size", str(c.batch_size)]
        ours += ["--calib", str(calib), "--text-field", "text", *data]
        theirs += ["--calib", str(calib), *data, "--max-batches", str(c.max_batches)]
    if c.method in ("loftq", "qpissa"):
        ours += ["--quant", "nf4", "--quant-iters", str(c.iters)]
        theirs += ["--iters", str(c.iters)]
    return ours, theirs


def dirty_kib() -> int | None:
    """Dirty + Writeback pages (KiB) of the page cache: data written but not yet on disk."""
    try:
        rows = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        return int(rows["Dirty"].split()[0]) + int(rows["Writeback"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


def run(cmd: list[str]) -> dict[str, Any]:
    """One command in a fresh process, timed from the outside. The page cache is flushed first (``sync``, which
    keeps it warm): a command must not pay for the previous one's writes still draining to disk."""
    before = dirty_kib()
    os.sync()
    with DevicePoll() as poll:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"failed": proc.returncode, "stderr": proc.stderr[-3000:], "wall": round(wall, 3)}
    return {"wall": round(wall, 3), "polled": poll.peak, "stdout": proc.stdout, "stderr": proc.stderr,
            "dirty_kib_before_sync": before, "dirty_kib_after": dirty_kib()}  # fmt: skip


def svdtool_result(r: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(r.pop("stdout"))
    err = r.pop("stderr")
    peak = [int(x.split()[1]) for x in err.splitlines() if x.startswith("PEAK_ALLOCATED ")]
    timings = doc["manifest"]["timings"]
    phases = {"startup": round(r["wall"] - timings.get("total", 0.0), 3), **timings}
    stats = doc["settings"]["extra"].get("statistics_seconds")
    if stats is not None:
        phases["statistics"] = stats
    for k, v in doc["settings"]["extra"].items():
        if k.startswith("statistics_") and k.endswith("_seconds") and k != "statistics_seconds":
            phases[k.removesuffix("_seconds")] = v
    ratios = [x["extra"]["quant_ratio"] for x in doc["layers"] if "quant_ratio" in x.get("extra", {})]
    ridge = {x["module"]: x["extra"]["ridge"] for x in doc["layers"] if "ridge" in x.get("extra", {})}
    per_layer = {x["module"]: [x.get("seconds"), x.get("algorithm")] for x in doc["layers"]}
    return {**r, "phases": phases, "peak_allocated": peak[-1] if peak else None, "quant_ratios": ratios,
            "ridge": ridge, "per_layer": per_layer, "stderr_tail": err[-400:]}  # fmt: skip


def peft_result(r: dict[str, Any]) -> dict[str, Any]:
    line = next(x for x in r.pop("stdout").splitlines()[::-1] if x.startswith("RESULT "))
    r.pop("stderr")
    return {**r, **json.loads(line[len("RESULT ") :])}


# ---------------------------------------------------------------- reading the two outputs
def adapter(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors.torch import load_file

    (sub,) = [p for p in folder.iterdir() if p.name.endswith("_init")]
    return load_file(str(sub / "adapter_model.safetensors")), json.loads((sub / "adapter_config.json").read_text())


def tensor(folder: Path, name: str) -> Any:
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    file = json.loads(index.read_text())["weight_map"][name] if index.is_file() else "model.safetensors"
    with safe_open(str(folder / file), "pt") as fh:
        return fh.get_tensor(name)


def modules(state: dict[str, Any]) -> list[str]:
    return sorted(k.removesuffix(".lora_A.weight") for k in state if k.endswith(".lora_A.weight"))


def scale(cfg: dict[str, Any]) -> float:
    return float(cfg["lora_alpha"]) / float(cfg["r"])  # the patterns keep s (EVA, --rank-alloc)


def product_diff(a1: Any, b1: Any, a2: Any, b2: Any) -> float:
    """‖B₁A₁ − B₂A₂‖_F / ‖B₂A₂‖_F in float64 from r×r Grams (no out×in product)."""
    a1, b1, a2, b2 = (x.double() for x in (a1, b1, a2, b2))

    def inner(ba: Any, bb: Any, aa: Any, ab: Any) -> Any:  # ⟨B_a A_a, B_b A_b⟩ = tr((B_aᵀB_b)(A_b A_aᵀ))
        return ((ba.T @ bb) * (ab @ aa.T).T).sum()

    d2 = inner(b1, b1, a1, a1) - 2 * inner(b1, b2, a1, a2) + inner(b2, b2, a2, a2)
    return float(d2.clamp(min=0).sqrt() / inner(b2, b2, a2, a2).sqrt())


def bf16_valued(x: Any) -> bool:
    import torch

    return bool(torch.equal(x.float(), x.float().to(torch.bfloat16).float()))


def agree_products(out: Path, ridge: dict[str, float] | None = None, damp: dict[str, float] | None = None
                   ) -> dict[str, Any]:  # fmt: skip
    """Per target ‖sBA − sBA_PEFT‖/‖sBA_PEFT‖; where PEFT's factors are bf16 values (its init casts the adapter
    to a bf16 base's dtype before get_peft_model upcasts it to float32), also with svdtool's factors rounded the
    same way, which isolates the rounding. CorDA: both tools' ridge d per target."""
    import torch

    (sa, ca), (sb, cb) = adapter(out / "svdtool"), adapter(out / "peft")
    rows = []
    for m in modules(sb):
        a, b = sa[m + ".lora_A.weight"], sa[m + ".lora_B.weight"]
        pa, pb = sb[m + ".lora_A.weight"], sb[m + ".lora_B.weight"]
        row: dict[str, Any] = {"module": m.removeprefix("base_model.model."),
                               "diff": product_diff(a, scale(ca) * b, pa, scale(cb) * pb)}  # fmt: skip
        if bf16_valued(pa) and bf16_valued(pb):
            ra, rb = a.to(torch.bfloat16).float(), b.to(torch.bfloat16).float()
            row["diff_svdtool_rounded_bf16"] = product_diff(ra, scale(ca) * rb, pa, scale(cb) * pb)
        if ridge is not None and damp is not None:
            row["ridge_svdtool"], row["ridge_peft"] = ridge.get(row["module"]), damp.get(row["module"])
        rows.append(row)
    vals = sorted(r["diff"] for r in rows)
    missing = sorted(set(modules(sb)) - set(modules(sa)))
    res = {"what": "‖sBA − sBA_PEFT‖/‖sBA_PEFT‖", "layers": len(vals), "median": vals[len(vals) // 2],
           "max": vals[-1], "missing_in_svdtool": missing, "rows": rows}  # fmt: skip
    rounded = sorted(r["diff_svdtool_rounded_bf16"] for r in rows if "diff_svdtool_rounded_bf16" in r)
    if len(rounded) == len(rows):
        res.update(peft_bf16_valued=True, median_rounded=rounded[len(rounded) // 2], max_rounded=rounded[-1])
    if ridge is not None and damp is not None:
        res["ridge_differs"] = [r["module"] for r in rows if r["ridge_svdtool"] != r["ridge_peft"]]
    return res


def agree_eva(out: Path) -> dict[str, Any]:
    import torch

    (sa, _), (sb, _) = adapter(out / "svdtool"), adapter(out / "peft")
    rows = []
    for m in sorted(set(modules(sa)) | set(modules(sb))):
        ka = sa[m + ".lora_A.weight"].shape[0] if m + ".lora_A.weight" in sa else 0
        kb = sb[m + ".lora_A.weight"].shape[0] if m + ".lora_A.weight" in sb else 0
        k = min(ka, kb)
        row: dict[str, Any] = {"module": m, "k_svdtool": ka, "k_peft": kb}
        if k:
            qa = torch.linalg.qr(sa[m + ".lora_A.weight"][:k].double().T).Q
            qb = torch.linalg.qr(sb[m + ".lora_A.weight"][:k].double().T).Q
            cos = torch.linalg.svdvals(qa.T @ qb).clamp(max=1.0)
            row.update(mean_cos=float(cos.mean()), min_cos=float(cos.min()))
        rows.append(row)
    cos = [r["mean_cos"] for r in rows if "mean_cos" in r]
    return {"what": "principal-angle cosines, PEFT's IPCA vs svdtool's exact components", "layers": len(rows),
            "mean_cos": sum(cos) / max(len(cos), 1), "worst_layer_mean_cos": min(cos, default=0.0),
            "smallest_cos": min((r["min_cos"] for r in rows if "min_cos" in r), default=0.0),
            "rank_differs": sum(r["k_svdtool"] != r["k_peft"] for r in rows), "rows": rows}  # fmt: skip


def quant_ratios(model: Path, folder: Path) -> list[float]:
    """‖W − (Q(base) + s·B·A)‖ / ‖W − Q(W)‖ per target of ``folder`` (base = its saved weights), NF4 as loaded."""
    import torch

    from svdtool.quant import nf4

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    state, cfg = adapter(folder)
    out = []
    for m in modules(state):
        name = m.removeprefix("base_model.model.") + ".weight"
        w, base = tensor(model, name).to(dev), tensor(folder, name).to(dev)
        delta = scale(cfg) * state[m + ".lora_B.weight"].to(dev).double() @ state[m + ".lora_A.weight"].to(dev).double()
        fit = nf4.fake_quantize(base).double() + delta
        plain = nf4.fake_quantize(w).double()
        out.append(float((w.double() - fit).norm() / (w.double() - plain).norm()))
    return out


def agree_quant(model: Path, out: Path, peft: bool) -> dict[str, Any]:
    res: dict[str, Any] = {"what": "‖W − (Q(base) + sBA)‖/‖W − Q(W)‖, NF4 as loaded"}
    for who in ("svdtool", "peft") if peft else ("svdtool",):
        r = quant_ratios(model, out / who)
        res[who] = {"median": sorted(r)[len(r) // 2], "max": max(r), "per_layer": r}
    return res


def compare(c: Config, model: Path, out: Path, res: dict[str, Any]) -> dict[str, Any]:
    if c.method == "olora":
        return agree_products(out)
    if c.method == "corda":
        return agree_products(out, res["svdtool"].get("ridge"), res["peft"].get("damp"))
    if c.method == "eva":
        return agree_eva(out)
    return agree_quant(model, out, c.peft)


# ---------------------------------------------------------------- the run and the table
def run_config(name: str, c: Config, a: argparse.Namespace) -> dict[str, Any]:
    model, calib = prepare(a.work, a.tokenizer, c, a.smoke)
    out = (a.out_root or a.work) / f"out-{name}"
    shutil.rmtree(out, ignore_errors=True)
    ours, theirs = commands(c, model, calib, out)
    res: dict[str, Any] = {"config": asdict(c), "estimate": estimate(c), "commands": [ours, theirs]}
    r = run(ours)
    res["svdtool"] = r if "failed" in r else svdtool_result(r)
    if c.method in ("olora", "corda"):
        drop_base(out / "svdtool")  # the adapters are compared; the disk holds the next 13.5 GB base
    if c.peft and not a.svdtool_only:
        r = run(theirs)
        res["peft"] = r if "failed" in r else peft_result(r)
    if not any("failed" in res.get(k, {}) for k in ("svdtool", "peft")) and (not c.peft or "peft" in res):
        res["agreement"] = compare(c, model, out, res)
    shutil.rmtree(out, ignore_errors=True)  # keep the disk for the next config
    return res


def drop_base(folder: Path) -> None:
    for f in folder.glob("*.safetensors"):
        f.unlink()


def warm_up(seconds: float) -> None:
    """Matrix products for ``seconds`` in a throwaway process: the first process after a machine starts ran up to
    20% slower (bench_e2e), whichever tool it was."""
    code = (
        "import time, torch\n"
        "x = torch.randn(8192, 8192, device='cuda', dtype=torch.bfloat16); t = time.time()\n"
        f"while time.time() - t < {seconds}: x = (x @ x).clamp(-1, 1)\n"
        "torch.cuda.synchronize()"
    )
    subprocess.run([sys.executable, "-c", code], check=False)


def headline(res: dict[str, Any]) -> tuple[float | None, float | None]:
    """(svdtool's, PEFT's) seconds of the init phase itself: statistics + math, or the compute phases."""
    s, p = res["svdtool"].get("phases", {}), res.get("peft", {}).get("phases", {})
    ours = (s.get("statistics") or 0.0) + (s.get("math") or 0.0) if s else None
    theirs = (p.get("statistics") or 0.0) + (p.get("init") or 0.0) if p else None
    return ours, theirs


def agreement_text(agr: dict[str, Any] | None) -> str:
    if not agr:
        return "-"
    if "max" in agr:
        return f"sBA rel diff median {agr['median']:.1e} max {agr['max']:.1e}"
    if "mean_cos" in agr:
        worst, differ = agr["worst_layer_mean_cos"], agr["rank_differs"]
        return f"cos mean {agr['mean_cos']:.4f} worst {worst:.4f}, {differ} ranks differ"
    q = [f"{w} ratio med {agr[w]['median']:.4f} max {agr[w]['max']:.4f}" for w in ("svdtool", "peft") if w in agr]
    return "; ".join(q)


def table(results: dict[str, dict[str, Any]]) -> str:
    ratio = lambda x, y: f"{y / x:.1f}×" if x and y else "-"  # noqa: E731
    gib = lambda r: f"{r['peak_allocated'] / GiB:.1f}" if r.get("peak_allocated") else "-"  # noqa: E731
    head = f"{'config':7} {'layers':>6} {'svd s':>7} {'PEFT s':>7} {'speed-up':>8} {'init s':>7} {'PEFT':>7} "
    lines = [head + f"{'speed-up':>8} {'peak GiB':>9} {'PEFT':>6}  agreement"]
    for name, res in results.items():
        c, s, p = res["config"], res["svdtool"], res.get("peft", {})
        if "failed" in s or "failed" in p:
            why = " | ".join((r.get("stderr") or "").strip().splitlines()[-1:] for r in (s, p) if "failed" in r)
            lines.append(f"{name:7} FAILED: svdtool {s.get('failed', 0)}, PEFT {p.get('failed', 0)}: {why[-200:]}")
            continue
        ours, theirs = headline(res)
        pw = p.get("wall")
        num = lambda x, w, d: f"{x:{w}.{d}f}" if x is not None else f"{'-':>{w}}"  # noqa: E731
        lines.append(
            f"{name:7} {c['layers']:>4}/32 {s['wall']:7.1f} {num(pw, 7, 1)} {ratio(s['wall'], pw):>8} "
            f"{num(ours, 7, 2)} {num(theirs, 7, 2)} {ratio(ours, theirs):>8} {gib(s):>9} {gib(p):>6}  "
            f"{agreement_text(res.get('agreement'))}"
        )
    for name, res in results.items():
        for who in ("svdtool", "peft"):
            ph = res.get(who, {}).get("phases")
            if ph:
                text = " ".join(f"{k}={v:.2f}" for k, v in ph.items() if isinstance(v, (int, float)))
                lines.append(f"  {name} {who} phases (s): {text}")
    lines.append("layers: decoder layers of Llama-2-7B shape in the checkpoint (both tools, same folder); init s: "
                 "svdtool statistics + math, PEFT its init calls (preprocess_corda / initialize_lora_eva_weights + "
                 "get_peft_model); peak: torch.cuda.max_memory_allocated of each process")  # fmt: skip
    return "\n".join(lines)


def layer_count(spec: str | None, name: str) -> int | None:
    if not spec:
        return None
    if spec.isdigit():
        return int(spec)
    pairs = dict(x.split("=", 1) for x in spec.split(","))
    return int(pairs[name]) if name in pairs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for checkpoints, data and outputs")
    ap.add_argument("--tokenizer", required=True, help="a folder with a tokenizer (the packaged SmolLM2's)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    ap.add_argument("--layers", help="decoder layer counts: N for every config, or NAME=N,… (e.g. corda=8)")
    ap.add_argument("--out-root", type=Path, help="where both tools write their outputs (default: --work); "
                    "e.g. a tmpfs, to see the tools without the disk")  # fmt: skip
    ap.add_argument("--svdtool-only", action="store_true", help="a probe: svdtool's side alone, no PEFT run")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks every config runs")
    ap.add_argument("--estimate", action="store_true", help="print PEFT's estimated time per config and stop")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds of GPU work before the first config")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    chosen = {}
    for name in a.configs.split(","):
        if name not in CONFIGS:
            raise SystemExit(f"unknown config {name!r}: expected one of {', '.join(CONFIGS)}")
        c = CONFIGS[name]
        c = replace(c, **{k: v for k, v in SMOKE.items() if k != "samples" or c.samples}) if a.smoke else c
        chosen[name] = replace(c, layers=layer_count(a.layers, name)) if layer_count(a.layers, name) else c
    for name, c in chosen.items():
        print(f"{name}: {c.layers}/32 layers; PEFT estimate {json.dumps(estimate(c))}", flush=True)
    if a.estimate:
        return
    a.work.mkdir(parents=True, exist_ok=True)
    print(f"versions {versions()}", flush=True)
    import torch

    if torch.cuda.is_available() and a.warmup > 0:
        warm_up(a.warmup)
    results: dict[str, dict[str, Any]] = {}
    for name, c in chosen.items():
        t0 = time.perf_counter()
        results[name] = run_config(name, c, a)
        brief = {k: v for k, v in results[name].items() if k not in ("commands", "estimate")}
        print(f"{name} ({time.perf_counter() - t0:.0f} s): {json.dumps(brief)[:1500]}", flush=True)
        if a.json:  # after every config, so a run cut short keeps what it measured
            a.json.write_text(json.dumps({"versions": versions(), "smoke": a.smoke, "results": results}, indent=1))
    print(table(results), flush=True)


if __name__ == "__main__":
    main()
