"""The GPU side of ``spectrum``: one thread driving the GPU through two-stage eigen-solves.

For each matrix the GPU forms the float64 Gram matrix and reduces it, in batches of equal size, to a
band (:mod:`svdtool.linalg.band`, ≈10–20 ms for 4096²). With Triton installed the GPU then finishes the solve
itself (:mod:`svdtool.linalg.bulge`: bulge chasing to tridiagonal form and bisection, ≈5 ms). Without Triton a
pool of CPU processes takes the band's eigenvalues (LAPACK ``dsbevd``, about a second of one core), and
the GPU solves a matrix at once with cuSOLVER's ``syevd`` (≈0.1 s) whenever they already have enough
queued work, so the GPU and the CPU cores stay busy together, whatever their relative speed.

Finished matrices return to this thread, which refines small singular values on the GPU
(:func:`svdtool.linalg.exact.finish_from_gram`) before the matrix is reported.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from typing import TYPE_CHECKING, Any

from svdtool.linalg import band, bulge, cuda_graphs, exact

if TYPE_CHECKING:
    import numpy as np
    import torch

    from svdtool.loading import TensorInfo

#: Gram matrices smaller than this are solved on the GPU directly: cuSOLVER needs only milliseconds.
BAND_MIN = 1024
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: Gram matrices of one size reduced to bands together.
BAND_BATCH = 16
#: Bands queued per CPU process before the GPU solves matrices itself (CPU band route).
QUEUE_PER_PROCESS = 1


@dataclass
class _Pending:
    index: int
    info: TensorInfo
    w: torch.Tensor  # kept for the refinement of small σ
    t_read: float
    seconds: float  # GPU-thread time so far
    future: Future[np.ndarray]


def start_pool(processes: int) -> ProcessPoolExecutor | None:
    """A pool of ``processes`` CPU processes for band eigenvalues, warming up in the background."""
    if processes <= 0:
        return None
    # spawn, not fork: the parent holds a CUDA context and threads. The processes start during the
    # submits below and inherit the environment of that moment: one BLAS thread each, as the band
    # solver gains nothing from more and idle BLAS threads spinning in every process cost cores.
    # The processes ignore SIGINT: a Ctrl-C reaches the whole process group, and the parent alone shuts
    # the pool down (each process would otherwise print its own KeyboardInterrupt traceback).
    pool = ProcessPoolExecutor(processes, mp_context=get_context("spawn"), initializer=_ignore_sigint)
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update(dict.fromkeys(_THREAD_VARS, "1"))
    try:
        for _ in range(processes):
            pool.submit(band.warm_up)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return pool


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def solve_stream(
    items: Iterator[tuple[int, TensorInfo, torch.Tensor, float]],
    device: torch.device,
    pool: ProcessPoolExecutor | None,
    processes: int,
    make: Callable[[int, TensorInfo, np.ndarray, str, float, float], Any],
    stop: threading.Event | None = None,
    refine: bool = True,
) -> Iterator[Any]:
    """Singular values of each (index, info, W on ``device``, read seconds), in completion order.

    ``make(index, info, sigma, method, seconds, read_seconds)`` builds what is yielded. Once ``stop`` is
    set (an error elsewhere, or Ctrl-C), queued bands are dropped instead of finished. ``refine=False``:
    see :func:`svdtool.linalg.exact.finish_from_gram`.
    """
    import torch

    pending: list[_Pending] = []
    chase = bulge.available(device)
    width, route = (bulge.BANDWIDTH, "gram64-chase") if chase else (band.BANDWIDTH, "gram64-band")

    def finish(p: _Pending) -> Any:
        t0 = time.perf_counter()
        try:
            lam = p.future.result()
        except BrokenProcessPool:  # a CPU process died: solve this one on the GPU
            sigma, method = exact.singular_values(p.w, device, refine)
        else:
            sigma, method = exact.finish_from_gram(p.w, lam, device, route, refine)
        return make(p.index, p.info, sigma, method, p.seconds + time.perf_counter() - t0, p.t_read)

    def ready(block: bool) -> Iterator[Any]:
        if not pending:
            return
        done, _ = wait([p.future for p in pending], timeout=None if block else 0, return_when="FIRST_COMPLETED")
        for p in [p for p in pending if p.future in done]:
            pending.remove(p)
            yield finish(p)

    # Gram matrices waiting to be reduced together, by size: one batched reduction amortises the fixed
    # cost of its many small kernels (measured on an H100 host: 160 ms for one 4096² matrix, 42 ms each for four).
    waiting: dict[int, list[tuple[int, TensorInfo, torch.Tensor, float, torch.Tensor, float]]] = {}

    def reduce(k: int) -> None:
        assert chase or pool is not None  # only the band route fills ``waiting``
        group = waiting.pop(k)
        t0 = time.perf_counter()
        grams = [x[4] for x in group]
        if device.type == "cuda":  # a full batch, padded with copies, replays the captured graph
            grams += grams[-1:] * (BAND_BATCH - len(grams))
        bands = band.reduce_to_band(torch.stack(grams), width)  # (batch, b+1, k)
        del grams
        real = len(group)  # the rest is padding
        jobs: list[Future[np.ndarray]] = []
        if chase:
            for lam in bulge.eigenvalues(*bulge.tridiagonalize(bands))[:real].cpu().numpy():  # (real, k)
                jobs.append(Future())
                jobs[-1].set_result(lam)
        else:
            assert pool is not None
            jobs = [pool.submit(band.band_eigenvalues, host) for host in bands[:real].cpu().numpy()]
        share = (time.perf_counter() - t0) / real
        for (index, info, w, t_read, _, sec), future in zip(group, jobs, strict=True):
            pending.append(_Pending(index, info, w, t_read, sec + share, future))

    try:
        for index, info, w, t_read in items:
            t0 = time.perf_counter()
            queued = len(pending) + sum(len(x) for x in waiting.values())
            banded = chase or (pool is not None and queued < processes * (1 + QUEUE_PER_PROCESS))
            if banded and min(w.shape) >= BAND_MIN:
                g = exact.gram64(w, device)  # (k, k) float64
                k = g.shape[0]
                waiting.setdefault(k, []).append((index, info, w, t_read, g, time.perf_counter() - t0))
                del g
                if len(waiting[k]) == BAND_BATCH:
                    reduce(k)
            else:
                sigma, method = exact.singular_values(w, device, refine)
                yield make(index, info, sigma, method, time.perf_counter() - t0, t_read)
            del w
            yield from ready(block=False)
        stopped = stop.is_set if stop is not None else (lambda: False)
        for k in list(waiting):
            if not stopped():
                reduce(k)
        while pending and not stopped():
            yield from ready(block=True)
    finally:  # also on errors and when the consumer stops early
        for p in pending:
            p.future.cancel()
        cuda_graphs.release()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
