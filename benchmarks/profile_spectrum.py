"""Probe: where the threads of `svdtool spectrum` spend their time (a sampling profiler, no dependencies).

    python benchmarks/profile_spectrum.py --dir /tmp/llama7b   # checkpoint from make_checkpoint.py

Samples every thread's Python stack every 2 ms during one warm run and prints, per thread, the share of
samples by the innermost svdtool (or torch/scipy) frame and by the svdtool call chain.
"""

# ruff: noqa
import argparse, collections, sys, threading, time

import torch

from svdtool.commands.spectrum import SpectrumRequest, run_spectrum


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/llama7b")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    run_spectrum(SpectrumRequest(model=args.dir, device="cuda", include=["*layers.0.*"]))  # warm-up
    run_spectrum(SpectrumRequest(model=args.dir, device="cuda", include=["*layers.[0-2].*"]))  # captures
    samples: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    chains: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    done = threading.Event()

    def sample() -> None:
        me = threading.get_ident()
        while not done.is_set():
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                name = names.get(ident, "?")
                leaf, chain, f = None, [], frame
                while f is not None:
                    fn = f.f_code.co_filename
                    if "svdtool" in fn:
                        here = f"{fn.split('svdtool/')[-1]}:{f.f_code.co_name}:{f.f_lineno}"
                        leaf = leaf or here
                        chain.append(f.f_code.co_name)
                    f = f.f_back
                top = frame.f_code.co_name
                samples[name][f"{leaf} <- {top}"] += 1
                chains[name][" > ".join(reversed(chain[:6]))] += 1
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    run = run_spectrum(SpectrumRequest(model=args.dir, device="cuda"))
    wall = time.perf_counter() - t0
    done.set()
    print(f"wall {wall:.2f} s; timings {run.result.manifest.timings}")
    for name, c in samples.items():
        total = sum(c.values())
        if total < 50:
            continue
        print(f"\n== thread {name}: {total} samples")
        for k, v in c.most_common(args.top):
            print(f"{100 * v / total:5.1f}%  {k}")
        print("-- chains")
        for k, v in chains[name].most_common(12):
            print(f"{100 * v / total:5.1f}%  {k}")


if __name__ == "__main__":
    main()
