"""`svdtool spectrum` as users type it, on Llama-2-7B shapes: the cost of the power-law fit and of torchrun.

    python benchmarks/bench_spectrum_cli.py --dir /tmp/llama7b --rounds 3 --json out.json [--small]

Every run is its own fresh process, end to end (interpreter start-up, import, open, read, σ, metrics,
JSON and sidecar written), with the page cache warm (one warm-up run first). The configurations run in
rotating order, ``--rounds`` times each:

* ``plain``: ``svdtool spectrum M --format json --out O``, the default, WeightWatcher's power-law fit included;
* ``no-power-law``: the same with ``--no-power-law`` (issue 17: the fit must cost ≤ 10 %);
* ``torchrun-1``: ``torchrun --standalone --nproc-per-node 1 -m svdtool spectrum …`` (launcher included);
* ``torchrun-1-forced``: the same with ``SVDTOOL_DISTRIBUTED=on``, i.e. the distributed code path (process
  group, plan check, settles, all-gather of σ) at world size 1 (issue 14: ≤ 3 % over ``plain``).

Every run's σ sidecar must equal the plain run's, bit for bit. The table gives the median and min wall time,
the ratio of medians to ``plain``, and the run's own phases (manifest timings) of its median run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).parent))
from make_checkpoint import LLAMA2_7B, SMALL, make_llama_checkpoint  # noqa: E402

LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
CONFIGS: dict[str, tuple[list[str], list[str], dict[str, str]]] = {
    # name: (launcher prefix, extra spectrum args, extra environment)
    "plain": ([sys.executable], [], {}),
    "no-power-law": ([sys.executable], ["--no-power-law"], {}),
    "torchrun-1": (LAUNCH, [], {}),
    "torchrun-1-forced": (LAUNCH, [], {"SVDTOOL_DISTRIBUTED": "on"}),
}


def run(name: str, model: Path, out: Path) -> dict[str, Any]:
    prefix, extra, env = CONFIGS[name]
    shutil.rmtree(out, ignore_errors=True)
    cmd = [*prefix, "-m", "svdtool", "spectrum", str(model), "--format", "json", "--out", str(out), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    doc = json.loads((out / "spectrum.json").read_text())
    sigmas = load_file(str(out / "spectra.safetensors"))  # the sidecar's metadata says when; the σ must not differ
    sidecar = hashlib.sha256(b"".join(n.encode() + sigmas[n].tobytes() for n in sorted(sigmas))).hexdigest()
    return {"wall": wall, "timings": doc["manifest"]["timings"], "device": doc["manifest"]["device"], "sha": sidecar}


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    base = statistics.median(r["wall"] for r in runs["plain"])
    for name, rs in runs.items():
        walls = sorted(r["wall"] for r in rs)
        med = statistics.median(walls)
        typical = min(rs, key=lambda r: abs(r["wall"] - med))
        out[name] = {
            "median_s": med,
            "min_s": walls[0],
            "walls_s": [r["wall"] for r in rs],
            "ratio": med / base,
            "phases": typical["timings"],
            "device": typical["device"],
        }
    return out


def table(summary: dict[str, Any]) -> str:
    lines = [
        "| run | median wall | min | ratio | open | read | math | svdtool total |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        p = s["phases"]
        lines.append(
            f"| {name} | {s['median_s']:.2f} s | {s['min_s']:.2f} s | {s['ratio']:.3f}× | {p.get('open', 0):.2f} s"
            f" | {p.get('read', 0):.2f} s | {p.get('math', 0):.2f} s | {p.get('total', 0):.2f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/llama7b")
    ap.add_argument("--small", action="store_true", help="a 2-layer model (smoke test on a CPU)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--json")
    a = ap.parse_args()
    t0 = time.perf_counter()
    model = make_llama_checkpoint(Path(a.dir), **(SMALL if a.small else LLAMA2_7B))  # type: ignore[arg-type]
    print(f"checkpoint ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    work = Path(a.dir).parent / "bench-spectrum-cli"
    names = a.configs.split(",")
    if "plain" not in names:
        names.insert(0, "plain")
    run("plain", model, work / "warmup")  # page cache and compiled kernels warm
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for k in range(a.rounds):
        order = names[k % len(names) :] + names[: k % len(names)]  # rotate, so no config always goes first
        for name in order:
            r = run(name, model, work / name)
            runs[name].append(r)
            print(f"round {k} {name}: {r['wall']:.2f} s", file=sys.stderr, flush=True)
    shas = {r["sha"] for rs in runs.values() for r in rs}
    assert len(shas) == 1, "a configuration changed the σ"
    summary = summarise(runs)
    print(table(summary))
    if a.json:
        Path(a.json).write_text(json.dumps({"configs": summary, "sigma_sha256": shas.pop()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
