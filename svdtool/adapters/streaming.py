"""Overlap reading, computing and writing: a reader thread ahead of the math, writer threads behind it.

On CUDA every transfer goes through page-locked (pinned) host buffers on a side stream. Pageable
copies are slow (≈2–4 GB/s) and the driver's staging for them stalls the main thread's kernel
launches; pinned copies are DMA, tens of GB/s, and overlap the math. An event orders each copy
after the work it depends on. The buffers are reused from small pools, which also bound memory.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from svdtool.loading import Checkpoint, TensorInfo

_END = object()


class PinnedPool:
    """``count`` reusable page-locked host buffers of ``nbytes`` each; ``get`` blocks until one is free."""

    def __init__(self, count: int, nbytes: int) -> None:
        import torch

        self._free: queue.Queue[torch.Tensor] = queue.Queue()
        for _ in range(count):
            self._free.put(torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=True))

    def get(self) -> torch.Tensor:
        return self._free.get()

    def put(self, buf: torch.Tensor) -> None:
        self._free.put(buf)


def view_as(buf: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The first bytes of a uint8 buffer seen as a tensor of ``like``'s dtype and shape."""
    n = like.numel() * like.element_size()
    return buf[:n].view(like.dtype).view(like.shape)


class Prefetcher:
    """Reads ``infos`` in order on a thread, ``depth`` tensors ahead; ``device_for(info)`` says where each goes.

    Yields (info, tensor, read_seconds). A tensor kept on the CPU may be a read-only memory map.
    """

    def __init__(
        self,
        ckpt: Checkpoint,
        infos: list[TensorInfo],
        device_for: Callable[[TensorInfo], torch.device | None],
        depth: int = 2,
    ) -> None:
        self._q: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ckpt, infos, device_for), daemon=True)
        self._thread.start()

    def _run(self, ckpt: Checkpoint, infos: list[TensorInfo], device_for: Callable[..., Any]) -> None:
        import torch

        side = None
        staging: list[tuple[torch.Tensor, Any]] = []  # (pinned buffer, event of its last upload)
        try:
            for k, info in enumerate(infos):
                if self._stop.is_set():
                    return
                t0 = time.perf_counter()
                t = ckpt.read(info)
                dev = device_for(info)
                if dev is not None and dev.type == "cuda":
                    if side is None:
                        side = torch.cuda.Stream(dev)
                        biggest = max(i.nbytes for i in infos if device_for(i) is not None)
                        staging = [(torch.empty(biggest, dtype=torch.uint8, pin_memory=True), None) for _ in range(2)]
                    buf, last = staging[k % 2]
                    if last is not None:
                        last.synchronize()  # the buffer's previous upload has finished
                    host = view_as(buf, t)
                    host.copy_(t)
                    with torch.cuda.stream(side):
                        t = host.to(dev, non_blocking=True)
                        event = torch.cuda.Event()
                        event.record(side)
                    staging[k % 2] = (buf, event)
                    self._put((info, t, event, time.perf_counter() - t0))
                else:
                    self._put((info, t if dev is None else t.to(dev), None, time.perf_counter() - t0))
            self._put(_END)
        except BaseException as exc:  # surfaced on the consumer's thread
            self._put(exc)

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[tuple[TensorInfo, torch.Tensor, float]]:
        import torch

        while True:
            item = self._q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            info, t, event, seconds = item
            if event is not None:
                main = torch.cuda.current_stream(t.device)
                main.wait_event(event)
                t.record_stream(main)  # allocated on the side stream, used on the main one
            yield info, t, seconds

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class Writers:
    """A few threads that run write calls; at most ``limit`` pending. ``close`` re-raises the first error."""

    def __init__(self, threads: int = 4, limit: int = 16) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="svdtool-write")
        self._slots = threading.Semaphore(limit)
        self._futures: list[Future[None]] = []
        self._busy = 0.0
        self._lock = threading.Lock()

    @property
    def seconds(self) -> float:
        """Summed busy time of the writer threads."""
        return self._busy

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        self._slots.acquire()
        self._futures = [f for f in self._futures if not f.done() or f.exception() is not None]
        for f in self._futures:
            if f.done() and (exc := f.exception()) is not None:
                self._slots.release()
                raise exc
        self._futures.append(self._pool.submit(self._run, fn, args))

    def _run(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        t0 = time.perf_counter()
        try:
            fn(*args)
        finally:
            with self._lock:
                self._busy += time.perf_counter() - t0
            self._slots.release()

    def close(self, cancel: bool = False) -> None:
        """Wait for the writes; ``cancel`` (a failed or interrupted run) drops those not yet started."""
        self._pool.shutdown(wait=True, cancel_futures=cancel)
        for f in self._futures:
            if not f.cancelled() and (exc := f.exception()) is not None:
                raise exc


class HostCopier:
    """Copies device tensors into pinned buffers on a side stream; the writer gets them once they land."""

    def __init__(self, device: torch.device, nbytes: int, count: int = 4) -> None:
        import torch

        self.pool = PinnedPool(count, nbytes)
        self.stream = torch.cuda.Stream(device)

    def copy(self, t: torch.Tensor) -> Callable[[], tuple[torch.Tensor, Callable[[], None]]]:
        """Start the copy of ``t`` now; the thunk (for the writer thread) waits for it and returns
        (host tensor, release): call ``release`` once the host tensor has been written."""
        import torch

        done = torch.cuda.Event()
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(t.device))
        buf = self.pool.get()
        host = view_as(buf, t)
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(ready)
            host.copy_(t, non_blocking=True)
            done.record(self.stream)

        def fetch() -> tuple[torch.Tensor, Callable[[], None]]:
            done.synchronize()
            _ = t  # keep the device tensor alive until its copy has finished
            return host, lambda: self.pool.put(buf)

        return fetch
