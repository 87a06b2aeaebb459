"""The process world: one plain process, or one rank of a ``torch.distributed`` job.

Any launcher that sets ``WORLD_SIZE`` (> 1), ``RANK`` and ``LOCAL_RANK`` (torchrun, SLURM with the
usual mapping) turns distributed mode on; ``SVDTOOL_DISTRIBUTED=off`` ignores them, and
``SVDTOOL_DISTRIBUTED=on`` takes the distributed path even at ``WORLD_SIZE=1`` (under a launcher), so that
one GPU can measure what that path costs. CPU tensors go
over gloo, CUDA tensors over NCCL (one rank per GPU, ``cuda:LOCAL_RANK``); object collectives always
travel over gloo. c10d is used only for small things: rendezvous, settling errors, comparing plans
and gathering results at rank 0.

Errors behave as in one process. Local work runs inside :meth:`World.phase`; at its end every rank
learns whether every other one succeeded. A rank that failed re-raises its own error; the others raise
:class:`PeerFailed` carrying the first failing rank's one-line message and exit code, so no rank waits
in a collective for a peer that has already given up. Collectives time out after
``SVDTOOL_DIST_TIMEOUT`` seconds (default 1800).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from svdtool.errors import SvdtoolError
from svdtool.runtime import resolve_device

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

#: ``off`` makes a process ignore the launcher's WORLD_SIZE (one process per rank, each on its own);
#: ``on`` joins the launcher's job even when it has one rank (measuring the distributed path on one GPU).
SWITCH_ENV = "SVDTOOL_DISTRIBUTED"
TIMEOUT_ENV = "SVDTOOL_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0


class PeerFailed(SvdtoolError):
    """Another rank failed; this one stops too. The message is that rank's, prefixed with its number."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _switch() -> str:
    return os.environ.get(SWITCH_ENV, "").strip().lower()


def env_world_size() -> int:
    """WORLD_SIZE as the launcher set it (1 when unset, malformed, or switched off)."""
    if _switch() in ("off", "0", "false", "no"):
        return 1
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def forced() -> bool:
    """``SVDTOOL_DISTRIBUTED=on``: the distributed path even for a world of one rank."""
    return _switch() in ("on", "1", "true", "yes", "force")


def env_distributed() -> bool:
    """Whether this process joins a torch.distributed job (see :data:`SWITCH_ENV`)."""
    return env_world_size() > 1 or (forced() and "WORLD_SIZE" in os.environ)


def env_rank() -> int:
    """This process's RANK as the launcher set it (0 in a plain run): decides who prints."""
    if not env_distributed():
        return 0
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, str(default)))
    except ValueError:
        return default


def timeout_s() -> float:
    try:
        return float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    except ValueError:
        raise SvdtoolError(f"{TIMEOUT_ENV}={os.environ[TIMEOUT_ENV]!r}: expected seconds") from None


def setup_from_env() -> bool:
    """Join the job the launcher described, if any; True when this process joined one (see :func:`teardown`)."""
    if not env_distributed():
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise SvdtoolError(f"WORLD_SIZE is set but {var} is not: start svdtool with torchrun (or set all three)")
    local = _env_int("LOCAL_RANK", 0)
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"  # objects and CPU tensors over gloo, CUDA tensors over NCCL
    try:
        dist.init_process_group(backend=backend, timeout=_dt.timedelta(seconds=timeout_s()))
    except (RuntimeError, ValueError, OSError) as exc:
        failed = SvdtoolError(f"could not join the distributed job: {(str(exc).splitlines() or [''])[0]}")
        failed.exit_code = 1  # the network, not the input
        raise failed from None
    return True


def teardown() -> None:
    """Leave the job. Objects in reference cycles can still hold the gloo process group after
    ``destroy_process_group``; collected only at interpreter exit, its worker threads were then cancelled
    mid-shutdown and the rank aborted ("terminate called without an active exception", about 1 run in 10 of
    the torchrun init test once nothing imported transformers). Collecting here frees it while every thread
    can still be joined."""
    import gc

    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
        gc.collect()


def linger() -> None:
    """Wait at a barrier before exiting with an error, so that rank 0 prints it before torchrun ends the job.

    Every rank meets a user's mistake at the same point (:meth:`World.phase`), so all of them come here.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            dist.barrier()
        except Exception:  # a peer already gone: nothing left to wait for
            pass


def current() -> World:
    """The world this process is part of: the initialised default process group, else one process."""
    if "torch.distributed" not in sys.modules:
        return World()
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return World()
    rank, size = dist.get_rank(), dist.get_world_size()
    if size == 1 and not forced():
        return World()
    local_size = _env_int("LOCAL_WORLD_SIZE", size)
    return World(rank, size, _env_int("LOCAL_RANK", rank % local_size), local_size, joined=True)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    joined: bool = False  # part of a process group (of one rank too, under SVDTOOL_DISTRIBUTED=on)

    @property
    def distributed(self) -> bool:
        return self.size > 1 or self.joined

    @property
    def main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"rank {self.rank} of {self.size}" if self.distributed else "one process"

    def label(self, device: str) -> str:
        """The manifest's device field: ``device`` alone in one process, else what every rank used."""
        if not self.distributed:
            return device
        if self.size == 1:
            return f"1 rank (torch.distributed), {device}"
        return f"{self.size} ranks, each {device}"

    def device(self, spec: str) -> torch.device:
        """``--device`` for this rank: a bare ``cuda`` (or ``auto`` on a GPU host) means ``cuda:LOCAL_RANK``."""
        import torch

        dev = resolve_device(spec)
        if self.distributed and dev.type == "cuda" and spec.strip().lower() in ("auto", "cuda"):
            count = torch.cuda.device_count()
            if self.local_rank >= count:
                raise SvdtoolError(f"local rank {self.local_rank} has no GPU of its own ({count} present)")
            dev = torch.device("cuda", self.local_rank)
        return dev

    def cores(self) -> int:
        """CPU cores for this process: the ranks of a node share its cores equally."""
        return max(1, (os.cpu_count() or 1) // max(1, self.local_size))

    # --- collectives (every rank must call them, in the same order) ------------------------------

    @contextmanager
    def phase(self) -> Iterator[None]:
        """Run local work; then every rank learns whether all succeeded (see the module docstring)."""
        if not self.distributed:
            yield
            return
        try:
            yield
        except BaseException as exc:
            self._settle(exc)
            raise
        self._settle(None)

    def _settle(self, exc: BaseException | None) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            return  # torn down by a rank that failed inside a collective pass (gradients.sharded.abandon)
        mine = None if exc is None else failure_summary(exc)
        every: list[Any] = [None] * self.size
        dist.all_gather_object(every, mine)
        if exc is not None:
            return  # the caller re-raises its own error
        failed = next(((r, s) for r, s in enumerate(every) if s is not None), None)
        if failed is not None:
            r, (message, code) = failed
            raise PeerFailed(f"rank {r}: {message}", code)

    def first_locally(self, fn: Callable[[], T]) -> T:
        """``fn`` on local rank 0 first (a download into a shared cache), then on the node's other ranks."""
        if not self.distributed:
            return fn()
        out: Any = None
        try:
            for turn in (True, False):
                with self.phase():
                    if (self.local_rank == 0) == turn:
                        out = fn()
        except BaseException:
            if hasattr(out, "close"):
                out.close()  # opened here, but a peer failed
            raise
        return out  # type: ignore[no-any-return]

    def agree(self, what: str, payload: object) -> None:
        """Refuse, on every rank, when ranks computed different ``payload`` (arguments, plans)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
        every: list[Any] = [None] * self.size
        dist.all_gather_object(every, digest)
        odd = [r for r, d in enumerate(every) if d != every[0]]
        if odd:
            ranks = ", ".join(map(str, odd))
            raise SvdtoolError(
                f"ranks disagree on {what}: rank {ranks} differ{'s' if len(odd) == 1 else ''} from rank 0 "
                "(start every rank with the same command, files and environment)"
            )

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj`` on every rank, in rank order."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        every: list[Any] = [None] * self.size
        dist.all_gather_object(every, obj)
        return every

    def gather(self, obj: T) -> list[T] | None:
        """Every rank's ``obj`` at rank 0, in rank order; None on the other ranks."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        every: list[Any] | None = [None] * self.size if self.main else None
        dist.gather_object(obj, every, dst=0)
        return every

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box: list[Any] = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[no-any-return]

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


def failure_summary(exc: BaseException) -> tuple[str, int]:
    """One line and an exit code for a failure, as the CLI would show it."""
    if isinstance(exc, SvdtoolError):
        return str(exc), exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", 130
    first = (str(exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}", 1
