"""Cost of the WeightWatcher power-law fit (svdtool.powerlaw) per matrix, against WeightWatcher's own loop.

    python benchmarks/bench_alpha_fit.py            # CPU, and the GPU when there is one

For k = min(n, m) eigenvalues the fit is O(k²) element-wise work. Compare the printed times with a
matrix's eigen-solve in docs/benchmarks.md (Llama-2-7B: k = 4096 for every matrix).
"""

from __future__ import annotations

import io
import os
import time
from contextlib import redirect_stdout

import numpy as np
import torch

from svdtool.powerlaw import fit_power_law


def best_of(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"load average {os.getloadavg()}, torch threads {torch.get_num_threads()}")
    for k in (576, 1536, 4096, 8192):
        lam = (np.random.default_rng(k).pareto(1.5, k) + 1) * 0.01
        line = f"k = {k:5d}:"
        for dev in devices:
            x = torch.from_numpy(lam).to(dev)
            fit_power_law(x)  # warm-up
            line += f"  svdtool {dev} {best_of(lambda x=x: fit_power_law(x)):.4f} s"
        try:
            from weightwatcher.WW_powerlaw import WWFit

            with redirect_stdout(io.StringIO()):
                line += f"  WeightWatcher loop {best_of(lambda lam=lam: WWFit(lam), 1):.4f} s"
        except ImportError:
            pass
        print(line, flush=True)


if __name__ == "__main__":
    main()
