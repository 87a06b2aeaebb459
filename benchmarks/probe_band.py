"""Probe: the two-stage eigenvalue route (svdtool/linalg/band.py) against cuSOLVER's one-stage syevd.

    python benchmarks/probe_band.py      # needs CUDA

Times, for 4096² float64 Gram matrices of random bf16 weights: `eigvalsh` (syevd) per matrix; the
batched GPU reduction to band form for several bandwidths and batch sizes; LAPACK band eigenvalues on
a pool of CPU processes; and the accuracy of the band route against syevd.
"""

# ruff: noqa
import os, time, subprocess, json
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import torch

from svdtool.linalg.band import band_eigenvalues, reduce_to_band


def timed(f, reps=3):
    """Seconds per call, by CUDA events around `reps` calls after one warm-up call."""
    f()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        f()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def random_grams(n: int, batch: int, dev: torch.device) -> torch.Tensor:
    """(batch, n, n) float64 Gram matrices of seeded random bf16 weights with N(0, 0.02²) entries."""
    torch.manual_seed(0)
    grams = []
    for _ in range(batch):
        w = (torch.randn(n, n, device=dev) * 0.02).to(torch.bfloat16).double()
        grams.append(w @ w.T)
    return torch.stack(grams)


def main() -> None:
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    print("torch", torch.__version__, torch.cuda.get_device_name(0), "cpus", os.cpu_count(), cpu, flush=True)
    dev = torch.device("cuda")
    n, batch = 4096, 16
    g = random_grams(n, batch, dev)
    print("eigvalsh (syevd) per matrix s", round(timed(lambda: torch.linalg.eigvalsh(g[0])), 4), flush=True)
    bands = {}
    from svdtool.linalg import cuda_graphs

    for b in (16, 32, 64):
        for graphs in (False, True):
            cuda_graphs.ENABLED = graphs
            for bs in (4, 16):
                s = timed(lambda: reduce_to_band(g[:bs], b), 2) / bs
                print(f"reduce_to_band b={b} batch={bs} graphs={graphs}: {s * 1e3:.1f} ms per matrix", flush=True)
        bands[b] = reduce_to_band(g, b).cpu().numpy()
        cuda_graphs.release()
    ref = torch.linalg.eigvalsh(g[0]).cpu().numpy()
    for b, band in bands.items():
        ev = band_eigenvalues(band[0])
        print(f"b={b} max |Δλ|/λ₁ vs syevd {np.abs(ev - ref).max() / ref[-1]:.2e}", flush=True)
    ctx = get_context("spawn")
    for workers in () if os.environ.get("PROBE_NO_CPU") else (14,):
        with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            list(ex.map(band_eigenvalues, [bands[16][0]] * workers))  # warm the workers
            for b, band in bands.items():
                jobs = [band[i % batch] for i in range(3 * workers)]
                t = time.perf_counter()
                list(ex.map(band_eigenvalues, jobs))
                dt = time.perf_counter() - t
                print(
                    f"CPU band eigenvalues b={b}, {workers} processes: {dt / len(jobs) * 1e3:.1f} ms per matrix"
                    f" (throughput), {dt / 3:.2f} s per wave",
                    flush=True,
                )
    t = time.perf_counter()
    band_eigenvalues(bands[32][0])
    print("one band b=32 in this process s", round(time.perf_counter() - t, 3))


if __name__ == "__main__":
    main()
