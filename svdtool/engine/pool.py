"""Run the per-matrix singular-value computations on a pool of workers, with reads one step ahead.

One reader thread reads tensors in file order (and uploads them to the GPU when there is one);
worker threads take them as they come. On a CPU, each worker is one core. On a GPU, one worker
drives the GPU and a pool of CPU processes finishes its two-stage eigen-solves
(:mod:`svdtool.engine.band_pool`).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from svdtool.engine import band_pool
from svdtool.linalg import bulge
from svdtool.loading import Checkpoint, TensorInfo

if TYPE_CHECKING:
    import numpy as np
    import torch

#: Cores left to the reader and GPU threads when CPU processes help a GPU.
CORES_KEPT = 2


@dataclass(frozen=True)
class Worker:
    name: str
    device: torch.device


@dataclass
class Computed:
    index: int
    info: TensorInfo
    sigma: np.ndarray
    method: str
    seconds: float  # compute time of this matrix
    read_seconds: float
    worker: str


def plan_workers(device: torch.device, cpu_workers: int | None, cores: int | None = None) -> tuple[list[Worker], int]:
    """Workers for ``device`` and the number of CPU processes helping a GPU (0 on a CPU).

    ``cpu_workers`` None means: as many as the ``cores`` support (default: all of this machine's; a
    rank of a distributed run gets its share, :meth:`svdtool.engine.world.World.cores`).
    """
    import torch

    cores = cores or os.cpu_count() or 1
    if device.type == "cuda" and bulge.available(device):
        return [Worker("gpu", device)], 0  # the GPU finishes its two-stage eigen-solves itself
    if device.type == "cuda":
        helpers = max(0, cores - CORES_KEPT) if cpu_workers is None else cpu_workers
        return [Worker("gpu", device)], helpers
    n = max(1, cores if cpu_workers is None else cpu_workers)
    # Each worker gets an equal share of the cores; one worker alone gets them all.
    torch.set_num_threads(max(1, cores // n))
    return [Worker(f"cpu{i}", torch.device("cpu")) for i in range(n)], 0


def compute_all(
    ckpt: Checkpoint,
    infos: list[TensorInfo],
    workers: list[Worker],
    on_done: Callable[[Computed], None],
    helpers: int = 0,
    keep: Callable[[TensorInfo, torch.Tensor], bool] | None = None,
    refine: bool = True,
) -> Generator[Computed, None, None]:
    """Yield one :class:`Computed` per tensor, in completion order; ``on_done`` is called under a lock.

    ``helpers`` CPU processes finish the GPU worker's eigen-solves (see :func:`plan_workers`).
    ``keep(info, W)``, called on the reader thread with W on the device, drops a tensor when it returns
    False (``spectrum`` skips matrices with NaN or ±Inf before any math). Close the generator (``closing``)
    so that an interrupt between two items stops and joins the threads at once.
    """
    import torch

    upload = next((w.device for w in workers if w.device.type == "cuda"), None)
    tasks: queue.Queue[Any] = queue.Queue(maxsize=len(workers) + 1)
    results: queue.Queue[Any] = queue.Queue()
    stop = threading.Event()
    lock = threading.Lock()

    def reader() -> None:
        try:
            for index, info in enumerate(infos):
                if stop.is_set():
                    return
                t0 = time.perf_counter()
                w = ckpt.read(info)
                if upload is not None:
                    w = w.to(upload)  # synchronous upload in the source dtype; cast happens on the GPU
                t_read = time.perf_counter() - t0
                if keep is not None and not keep(info, w):
                    continue
                tasks.put((index, info, w, t_read))
        except BaseException as exc:
            results.put(exc)
            stop.set()
        finally:
            for _ in workers:
                tasks.put(None)

    def items() -> Iterator[tuple[int, TensorInfo, torch.Tensor, float]]:
        while (item := tasks.get()) is not None:
            if not stop.is_set():
                yield item

    def work(worker: Worker, pool: ProcessPoolExecutor | None) -> None:
        def make(index: int, info: TensorInfo, sigma: np.ndarray, method: str, sec: float, t_read: float) -> Computed:
            return Computed(index, info, sigma, method, sec, t_read, worker.name)

        stream = torch.cuda.Stream(device=worker.device) if worker.device.type == "cuda" else None
        ctx = torch.cuda.stream(stream) if stream is not None else _nullcontext()
        try:
            with ctx:
                for done in band_pool.solve_stream(items(), worker.device, pool, helpers, make, stop, refine):
                    with lock:
                        on_done(done)
                    results.put(done)
        except BaseException as exc:
            results.put(exc)
            stop.set()
        results.put(_WorkerExit)

    # Helper processes only where some Gram matrix is large enough to take the band route.
    wanted = upload is not None and any(min(i.shape) >= band_pool.BAND_MIN for i in infos)
    pool = band_pool.start_pool(helpers) if helpers and wanted else None
    threads = [threading.Thread(target=reader, daemon=True)]
    threads += [
        threading.Thread(target=work, args=(w, pool if w.device.type == "cuda" else None), daemon=True) for w in workers
    ]
    # Float64 products never use TF32; turn it off anyway, while the workers run, so that no Gram product
    # can be float32-TF32.
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    for t in threads:
        t.start()
    exited = 0
    try:
        while exited < len(workers):
            item = results.get()
            if item is _WorkerExit:
                exited += 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        stop.set()
        # Unblock the reader if it waits on a full queue; once it is gone (its end-of-work markers may have
        # been drained here), wake the workers that wait for work; then let every thread finish.
        while any(t.is_alive() for t in threads):
            if threads[0].is_alive():
                try:
                    tasks.get_nowait()
                except queue.Empty:
                    pass
            else:
                for _ in workers:
                    try:
                        tasks.put_nowait(None)
                    except queue.Full:
                        break
            for t in threads:
                t.join(timeout=0.05)
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32


class _WorkerExit:
    pass


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
