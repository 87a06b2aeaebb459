"""Probe: band → tridiagonal on the GPU (svdtool/linalg/bulge.py) against LAPACK's band solver on one CPU core.

    python benchmarks/probe_bulge.py [--json out.json]     # needs CUDA and Triton

For a batch of 16 float64 Gram matrices of random bf16 4096² weights reduced to bandwidth b ∈ {16, 32, 64}:
the reduction (graphed), the GPU bulge chase eagerly (first call includes Triton's compile) and replayed as
a CUDA graph, the GPU bisection of the tridiagonal, LAPACK `dsterf` on the tridiagonal and `dsbevd` on the
band (one core each), and the eigenvalues of each route against cuSOLVER's dense `syevd`, all in float64.
"""

# ruff: noqa
import argparse, json, os, subprocess, time

import numpy as np
import torch

from probe_band import random_grams, timed  # benchmarks/ is the script's folder, so first on sys.path
from svdtool.linalg import bulge, cuda_graphs
from svdtool.linalg.band import band_eigenvalues, reduce_to_band


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--bands", default="16,32,64")
    args = ap.parse_args()
    import triton

    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name(0), cpu, flush=True)
    dev = torch.device("cuda")
    n, batch = args.n, 16
    g = random_grams(n, batch, dev)
    ref = [torch.linalg.eigvalsh(g[i]).cpu().numpy() for i in range(2)]
    out = {"n": n, "batch": batch, "torch": torch.__version__, "triton": triton.__version__}
    for b in map(int, args.bands.split(",")):
        row = {}
        row["reduce_s_per_matrix"] = timed(lambda: reduce_to_band(g, b)) / batch
        bands = reduce_to_band(g, b)
        cuda_graphs.ENABLED = False
        t0 = time.perf_counter()
        d, e = bulge.tridiagonalize(bands)
        torch.cuda.synchronize()
        row["chase_first_call_s"] = time.perf_counter() - t0
        row["chase_eager_s_per_batch"] = timed(lambda: bulge.tridiagonalize(bands), reps=1)
        cuda_graphs.ENABLED = True
        t0 = time.perf_counter()
        bulge.tridiagonalize(bands)
        torch.cuda.synchronize()
        row["chase_capture_s"] = time.perf_counter() - t0
        row["chase_graph_s_per_batch"] = timed(lambda: bulge.tridiagonalize(bands), reps=3)
        d_dev, e_dev = bulge.tridiagonalize(bands)
        row["bisection_s_per_batch"] = timed(lambda: bulge.eigenvalues(d_dev, e_dev), reps=2)
        ev = list(bulge.eigenvalues(d_dev, e_dev).cpu().numpy()[:2])
        d, e = d_dev.cpu().numpy(), e_dev.cpu().numpy()
        hb = bands.cpu().numpy()
        from scipy.linalg import lapack

        t0 = time.perf_counter()
        evs = [lapack.dsterf(d[i], e[i])[0] for i in range(2)]
        row["dsterf_s"] = (time.perf_counter() - t0) / 2
        t0 = time.perf_counter()
        evb = [band_eigenvalues(hb[i]) for i in range(2)]
        row["dsbevd_s"] = (time.perf_counter() - t0) / 2
        scale = max(abs(r[-1]) for r in ref)
        row["max_err_gpu_chase_vs_syevd_rel_to_norm"] = max(float(np.abs(a - r).max()) for a, r in zip(ev, ref)) / scale
        row["max_err_dsbevd_vs_syevd_rel_to_norm"] = max(float(np.abs(a - r).max()) for a, r in zip(evb, ref)) / scale
        row["max_err_gpu_chase_vs_dsbevd_rel_to_norm"] = (
            max(float(np.abs(a - r).max()) for a, r in zip(ev, evb)) / scale
        )
        row["max_err_dsterf_vs_syevd_rel_to_norm"] = max(float(np.abs(a - r).max()) for a, r in zip(evs, ref)) / scale
        out[f"b{b}"] = row
        print(f"b={b}", json.dumps(row), flush=True)
        cuda_graphs.release()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
