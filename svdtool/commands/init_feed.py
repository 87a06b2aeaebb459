"""Hand LoRA-GA's gradients to the init stream as they are finished, so writing overlaps the gradient passes.

``svdtool init --method lora-ga`` writes a residual as large as the model (13.5 GB for 7B), at what the
disk allows (≈ 1.1–1.4 GB/s on the H200 host of docs/benchmarks.md). Started only after the passes, the
write added its whole length to the run. Instead the init stream runs on a thread from the start:

* tensors that are not targets (embeddings, norms, the LM head) are copied while the passes run;
* target tensors come in the order their gradients are finished (top layer group first), and each waits in
  :class:`GradientFeed` until the estimate publishes its gradient (or top factors), so with several layer
  groups the residuals of a finished group are written while the next pass runs.

The gradient is produced on the passes' CUDA stream and used on the init thread's own stream: an event
orders the use after the production, and ``record_stream`` keeps the allocator from reusing the memory
too early.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from svdtool.runtime import Progress

if TYPE_CHECKING:
    import torch


class FeedClosed(Exception):  # noqa: N818 - control flow: the producer stopped (its own error is raised)
    pass


def _tensors(value: Any) -> list[torch.Tensor]:
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    return [t for t in (getattr(value, k, None) for k in ("U", "S", "Vh")) if isinstance(t, torch.Tensor)]


class GradientFeed(Mapping[str, Any]):
    """name -> gradient, filled by the estimate (``put``), read by the init stream; a read waits until it is there."""

    def __init__(self, names: list[str]) -> None:
        self._names = list(names)
        self._values: dict[str, tuple[Any, Any, Any]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._abandoned = False
        self._taken: set[str] = set()

    def put(self, name: str, value: Any) -> None:
        """Publish ``value`` (on the producer's thread, after the work that computes it was queued).

        Raises FeedClosed when the reader has given up (its own error is what the run reports).
        """
        import torch

        if self._abandoned:
            raise FeedClosed(name)
        event = device = None
        tensors = _tensors(value)
        if tensors and tensors[0].is_cuda:
            device = tensors[0].device
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(device))
        with self._cond:
            self._values[name] = (value, event, device)
            self._cond.notify_all()

    def put_missing(self, values: Mapping[str, Any]) -> None:
        """Publish every value not published yet (gradients read from --grad-cache arrive all at once)."""
        with self._cond:
            missing = [n for n in self._names if n not in self._values and n not in self._taken]
        for name in missing:
            self.put(name, values[name])

    def abandon(self) -> None:
        """The reader failed: the producer's next ``put`` raises FeedClosed."""
        self._abandoned = True

    def close(self) -> None:
        """No more values will come (the estimate ended, or failed): waiting readers raise FeedClosed."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __getitem__(self, name: str) -> Any:
        import torch

        if name not in self._names:
            raise KeyError(name)
        with self._cond:
            while name not in self._values:
                if self._closed:
                    raise FeedClosed(name)
                self._cond.wait()
            value, event, device = self._values.pop(name)
            self._taken.add(name)  # read once: free it as soon as the reader is done
        if event is not None:
            stream = torch.cuda.current_stream(device)
            stream.wait_event(event)
            for t in _tensors(value):
                t.record_stream(stream)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def device_stream(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """On CUDA, a stream of the calling thread's own (its kernels run beside the passes'), else nothing."""
    import torch

    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.stream(torch.cuda.Stream(device))


class HandOver:
    """A Progress for work begun in the background while another bar is on screen: it stays silent and keeps
    count until :meth:`show` hands it the real display, then catches up and goes on there."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._real: Progress | None = None
        self._started: tuple[str, int, int] | None = None
        self._pending: list[tuple[str, int]] = []
        self._messages: list[str] = []
        self._finished = False

    def start(self, label: str, total: int, total_bytes: int = 0) -> None:
        with self._lock:
            self._started = (label, total, total_bytes)
            if self._real is not None:
                self._real.start(label, total, total_bytes)

    def advance(self, item: str, nbytes: int = 0) -> None:
        with self._lock:
            if self._real is not None:
                self._real.advance(item, nbytes)
            else:
                self._pending.append((item, nbytes))

    def message(self, text: str) -> None:
        with self._lock:
            if self._real is not None:
                self._real.message(text)
            else:
                self._messages.append(text)

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            if self._real is not None:
                self._real.finish()

    def show(self, real: Progress) -> None:
        with self._lock:
            self._real = real
            for text in self._messages:
                real.message(text)
            if self._started is not None:
                real.start(*self._started)
                for item, nbytes in self._pending:
                    real.advance(item, nbytes)
            if self._finished:
                real.finish()
            self._pending, self._messages = [], []
