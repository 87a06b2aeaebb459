"""LoRA-GA and coverage end to end, as users run them: each command in its own fresh process, beside PEFT.

    python benchmarks/bench_e2e.py --work /tmp/e2e --tokenizer TOKDIR [--json out.json]     # Llama-2-7B shapes
    python benchmarks/bench_e2e.py --work /tmp/e2e --tokenizer TOKDIR --small               # CPU smoke test

Prepares (once) a Llama-2-7B-shaped bf16 checkpoint folder with a real tokenizer (``make_checkpoint.py``)
and ``calib.jsonl``: 128 plain-text records of English (Python's own documentation topics, cut into
overlapping windows of 6000 characters, so every record fills --max-length 1024 tokens). Then runs, each
as a subprocess with page cache warm:

* ``svdtool-exact``:  ``python -m svdtool init MODEL --method lora-ga -r 8 --alpha 16 --calib calib.jsonl …``
* ``svdtool-exact-g2``: the same with ``--grad-groups 2``
* ``svdtool-sketch``: the same with ``--gradient sketch``
* ``svdtool-coverage``: ``python -m svdtool coverage MODEL --calib calib.jsonl --ranks 8 …``
* ``peft``: ``benchmarks/peft_lora_ga.py`` (load, ``preprocess_loraga``, ``get_peft_model``, save adapter and base)
* ``floor``: the same script with ``--floor``: forward + activation backward only, on the same batches.
* ``warmup``: ``floor`` once more, first and left out of the table: the first process after a machine starts
  runs its passes up to 20% slower (measured), whichever tool it is.
* ``svdtool-exact-nographs``: ``svdtool-exact`` with ``SVDTOOL_CUDA_GRAPHS=0`` (what the graph trial costs).
* ``…-torchrun1``: any svdtool config under ``torchrun --standalone --nproc-per-node 1`` (the launcher's cost;
  the single-process path runs); ``…-forced1``: the same with ``SVDTOOL_DISTRIBUTED=on``, i.e. the distributed
  path (FSDP2-sharded weights, sharded accumulators, collectives) at world size 1, with its memory per rank.

Each row: wall time of the process, its phases (start-up and imports = wall − the run's own total), the
peak allocated device memory the process reports, and the peak device memory in use seen by polling
``torch.cuda.mem_get_info`` every 20 ms (context and allocator cache included). Ratios are against PEFT.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GiB = 1 << 30
CONFIGS = ("warmup", "peft", "floor", "svdtool-exact", "svdtool-exact-g2", "svdtool-sketch", "svdtool-coverage")


def calib_texts(n: int, chars: int = 6000, stride: int = 3600) -> list[str]:
    import pydoc_data.topics as topics

    corpus = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    return [(corpus + corpus)[(i * stride) % len(corpus) :][:chars] for i in range(n)]


def prepare(work: Path, tokenizer: str, small: bool, samples: int) -> tuple[Path, Path]:
    sys.path.insert(0, str(HERE))
    from make_checkpoint import LLAMA2_7B, SMALL, make_llama_checkpoint

    dims = dict(SMALL if small else LLAMA2_7B)
    dims.pop("vocab")
    model = make_llama_checkpoint(work / ("small" if small else "llama7b"), tokenizer=tokenizer, **dims)
    calib = work / "calib.jsonl"
    if not calib.is_file():
        calib.write_text("".join(json.dumps({"text": t}) + "\n" for t in calib_texts(samples)))
    return model, calib


class DevicePoll:
    """The most device memory in use while a child runs (all processes; minus what was in use before)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._base = 0
        self._thread: threading.Thread | None = None

    def __enter__(self) -> DevicePoll:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            self._base = total - free
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        import torch

        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free - self._base)
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def svdtool_cmd(name: str, model: Path, calib: Path, out: Path, a: argparse.Namespace) -> list[str]:
    data = [
        "--calib", str(calib), "--text-field", "text", "--samples", str(a.samples),
        "--max-length", str(a.max_length), "--batch-size", str(a.batch_size), "--format", "json",
    ]  # fmt: skip
    if name == "svdtool-coverage":
        return [
            sys.executable,
            "-m",
            "svdtool",
            "coverage",
            str(model),
            *data,
            "--ranks",
            str(a.rank),
            "--out",
            str(out),
        ]
    cmd = [sys.executable, "-m", "svdtool", "init", str(model), "--method", "lora-ga", "-r", str(a.rank)]
    cmd += ["--alpha", str(a.alpha), *data, "--out", str(out), "--overwrite"]
    if name == "svdtool-exact-g2":
        cmd += ["--grad-groups", "2"]
    if name == "svdtool-sketch":
        cmd += ["--gradient", "sketch"]
    return cmd


def svdtool_phases(doc: dict[str, Any], wall: float) -> dict[str, Any]:
    """Phases of a svdtool run from its JSON, in order; "startup" is the process wall time the run did not time."""
    timings = doc["manifest"]["timings"]
    total = float(timings.get("total", 0.0))
    if "gradient" in doc:  # coverage
        g = doc["gradient"]
        phases = {"startup": round(wall - total, 3), **g.get("phases", {}), "coverage": timings.get("coverage")}
        plan = g.get("plan", {}).get("reason")
        return {"phases": phases, "peak_allocated": g["peak_device_memory"], "plan": plan, "graphs": g["cuda_graphs"]}
    x = doc["settings"]["extra"]
    grad = {
        k[len("gradient_") : -len("_seconds")]: v
        for k, v in x.items()
        if k.startswith("gradient_") and k.endswith("_seconds")
    }
    grad.pop("", None)  # gradient_seconds: the whole estimate
    phases = {"startup": round(wall - total, 3), "prepare": timings.get("prepare"), **grad}
    phases.update(
        drain=timings.get("drain"),
        tail=round(total - sum(timings.get(k, 0.0) for k in ("prepare", "gradients", "drain")), 3),
    )
    peak = x.get("gradient_peak_device_memory")
    plan, graphs = x.get("gradient_plan"), x.get("gradient_cuda_graphs")
    return {"phases": phases, "peak_allocated": peak, "plan": plan, "graphs": graphs, "timings": timings}


def run_one(name: str, model: Path, calib: Path, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    out = work / f"out-{name}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if name.endswith("-nographs"):
        env["SVDTOOL_CUDA_GRAPHS"] = "0"
        name = name.removesuffix("-nographs")
    launcher: list[str] = []
    for suffix in ("-torchrun1", "-forced1"):
        if name.endswith(suffix):
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
            env["SVDTOOL_DISTRIBUTED"] = "on" if suffix == "-forced1" else "auto"
            name = name.removesuffix(suffix)
    if name in ("peft", "floor", "warmup"):
        cmd = [sys.executable, str(HERE / "peft_lora_ga.py"), str(model), str(calib), str(out)]
        cmd += ["--rank", str(a.rank), "--alpha", str(a.alpha), "--samples", str(a.samples)]
        cmd += ["--max-length", str(a.max_length), "--batch-size", str(a.batch_size)]
        cmd += ["--floor"] if name in ("floor", "warmup") else []
    else:
        cmd = svdtool_cmd(name, model, calib, out, a)
        if launcher:
            cmd = [*launcher, *cmd[1:]]  # ``-m svdtool …`` after the launcher's own arguments
    with DevicePoll() as poll:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"failed": proc.returncode, "stderr": proc.stderr[-3000:], "wall": wall}
    if name in ("peft", "floor", "warmup"):
        line = next(x for x in proc.stdout.splitlines()[::-1] if x.startswith("RESULT "))
        res = json.loads(line[len("RESULT ") :])
    else:
        res = svdtool_phases(json.loads(proc.stdout), wall)
        res["stderr_tail"] = proc.stderr[-600:]
    res.update(wall=round(wall, 3), device_peak_polled=poll.peak)
    subprocess.run(["rm", "-rf", str(out)], check=False)  # keep the disk for the next run
    return res


def table(results: dict[str, dict[str, Any]]) -> str:
    peft = results.get("peft", {})
    floor = results.get("floor", {})
    head = f"{'run':18} {'wall s':>7} {'×PEFT':>6} {'grad s':>7} {'×PEFT':>6} {'peak GiB':>9} {'×PEFT':>6}"
    lines = [head + f" {'polled':>7}  phases"]
    for name, r in results.items():
        if name == "warmup":
            continue
        if "failed" in r:
            lines.append(f"{name:18} FAILED ({r['failed']})")
            continue
        ph = r["phases"]
        grad = ph.get("passes", ph.get("gradient"))
        pk = (r.get("peak_allocated") or 0) / GiB
        pgrad = peft.get("phases", {}).get("gradient")
        ppk = (peft.get("peak_allocated") or 0) / GiB
        ratio = lambda x, y: f"{x / y:.2f}" if x and y else "-"  # noqa: E731
        lines.append(
            f"{name:18} {r['wall']:7.1f} {ratio(r['wall'], peft.get('wall')):>6} {grad or 0:7.2f} "
            f"{ratio(grad, pgrad):>6} {pk:9.1f} {ratio(pk, ppk):>6} {r['device_peak_polled'] / GiB:7.1f}  "
            + " ".join(f"{k}={v:.2f}" for k, v in ph.items() if isinstance(v, (int, float)))
        )
    if floor:
        lines.append(f"floor (forward + activation backward, same batches): {floor['phases']['gradient']:.2f} s")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    import platform
    from importlib import metadata

    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": str(torch.version.cuda)}
    for name in ("transformers", "peft", "svdtool"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "source tree"
    if torch.cuda.is_available():
        out["device"] = torch.cuda.get_device_name(0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for the checkpoint, data and outputs")
    ap.add_argument("--tokenizer", required=True, help="a folder with a tokenizer (e.g. the packaged SmolLM2's)")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, calib = prepare(a.work, a.tokenizer, a.small, a.samples)
    print(f"prepared {model} in {time.perf_counter() - t0:.1f} s; versions {versions()}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    for name in a.configs.split(","):
        results[name] = run_one(name, model, calib, a.work, a)
        print(f"{name}: {json.dumps(results[name])[:1500]}", flush=True)
    print(table(results), flush=True)
    if a.json:
        a.json.write_text(json.dumps({"versions": versions(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
