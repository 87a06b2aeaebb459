"""Run a function on a gloo world of fork-started ranks (public torch APIs only).

Forking keeps the parent's imports (≈0.06 s per world instead of seconds per spawned interpreter).
Rules: no CUDA in the parent, no live threads at fork; Linux only. A rank that raises surfaces as
``ProcessRaisedException`` with its traceback; ranks blocked in a collective are terminated.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

needs_fork = pytest.mark.skipif(sys.platform != "linux", reason="fork-started ranks need Linux")


def _entry(rank: int, world: int, local: int, rdzv: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["LOCAL_RANK"] = str(rank % local)  # torchrun's layout: node = rank // local
    os.environ["LOCAL_WORLD_SIZE"] = str(local)
    dist.init_process_group(
        "gloo", init_method=f"file://{rdzv}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )
    try:
        fn(rank, *args)
    finally:
        if dist.is_initialized():  # a rank that gave up mid-pass tore it down already
            dist.destroy_process_group()


def run_distributed(fn: Callable[..., Any], tmp: Path, *args: Any, world: int = 2, local: int | None = None) -> None:
    """``fn(rank, *args)`` on ``world`` fork-started ranks joined in a gloo group; re-raises a rank's error.

    ``local`` ranks per simulated node (``LOCAL_WORLD_SIZE``; default: one node of ``world``).
    """
    import torch.multiprocessing as mp

    rdzv = tmp / f"rdzv-{os.getpid()}-{len(list(tmp.glob('rdzv-*')))}"
    args_ = (world, local or world, str(rdzv), fn, args)
    mp.start_processes(_entry, args=args_, nprocs=world, join=True, start_method="fork")
