"""The init stream: read every tensor once, initialise the targets, write the residual and the adapter as it
goes, with reading, device work and writing overlapped (:mod:`svdtool.adapters.streaming`), and for LoRA-GA
beside the gradient passes (:mod:`svdtool.commands.init_feed`). :mod:`svdtool.commands.init` decides what to
stream; this module does the streaming.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdtool import naming
from svdtool.adapters.peft_format import ADAPTER_WEIGHTS, adapter_dirname, lora_key
from svdtool.adapters.safetensors_out import (
    INDEX_NAME,
    Planned,
    ShardSet,
    dtype_code,
    plan_shards,
    shard_names,
)
from svdtool.adapters.streaming import HostCopier, Prefetcher, Writers
from svdtool.commands.common import Progress
from svdtool.commands.init_distributed import owned_tensors
from svdtool.commands.init_feed import FeedClosed, GradientFeed, HandOver, device_stream
from svdtool.commands.init_gradients import StoredLayout, lora_ga_gradients
from svdtool.commands.init_layers import (
    Target,
    gradient_for,
    init_layer,
    lookup_gradient,
)
from svdtool.commands.init_statistics import SharedInputs
from svdtool.engine.work import Share
from svdtool.linalg import cuda_graphs
from svdtool.loading import Checkpoint, TensorInfo
from svdtool.methods import InitOptions, MethodSpec
from svdtool.nonfinite import TimedCheck
from svdtool.results.base import atomic_write_bytes
from svdtool.results.init import LayerInit

if TYPE_CHECKING:
    import torch

    from svdtool.commands.init_request import InitRequest


def estimate_and_stream(
    ckpt: Checkpoint,
    infos: list[TensorInfo],
    targets: list[Target],
    spec: MethodSpec,
    opts: InitOptions,
    req: InitRequest,
    device: torch.device,
    tmp: Path,
    progress: Progress,
) -> tuple[InitRequest, tuple[list[LayerInit], dict[str, float], list[str]]]:
    """Estimate the gradients on this thread while the init stream writes on another (:mod:`.init_feed`)."""
    import threading

    assert req.gradient_request is not None
    feed = GradientFeed([t.info.name for t in targets])
    transposed = {t.info.name for t in targets if t.transposed}
    streaming = replace(req, gradients=StoredLayout(feed, transposed))
    # Non-targets first (written during the passes), then targets as their gradients finish: top layers first.
    target_block = {t.info.name: naming.layer_index(t.info.name) or 0 for t in targets}
    order = sorted(infos, key=lambda i: (i.name in target_block, -target_block.get(i.name, 0)))
    stream_progress = HandOver()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            with device_stream(device):
                outcome["value"] = stream(
                    ckpt, infos, targets, spec, opts, streaming, device, tmp, stream_progress, read_order=order
                )
        except BaseException as exc:  # re-raised on the main thread
            outcome["error"] = exc
            feed.abandon()  # the estimate stops at its next result instead of running on for nothing

    thread = threading.Thread(target=work, name="svdtool-init-stream", daemon=True)
    thread.start()
    provenance: dict[str, Any] = {}
    t0 = time.perf_counter()
    t1 = None
    try:
        gradients, provenance = lora_ga_gradients(
            req.gradient_request,
            rank=req.rank,
            method_options=opts.extra,
            progress=progress,
            make_reducer=spec.reducer,
            on_result=feed.put,
        )
        feed.put_missing(gradients.inner if isinstance(gradients, StoredLayout) else gradients)
        t1 = time.perf_counter()
    except FeedClosed:
        pass  # the stream failed: its error is raised below
    finally:
        feed.close()
        stream_progress.show(progress)
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    layers, timings, files = outcome["value"]
    assert t1 is not None
    # gradients: the estimate (the stream ran beside it); drain: writing left once the gradients were done.
    timings.update(gradients=round(t1 - t0, 4), drain=round(time.perf_counter() - t1, 4))
    return replace(req, extra={**req.extra, **provenance}), (layers, timings, files)


#: Room for the small files (config, tokenizer, svdtool.json, card, index, safetensors headers).
SMALL_FILES_BYTES = 64 * 2**20


def planned_bytes(residual: list[TensorInfo], targets: list[Target]) -> int:
    """What the init folder will take on disk: the residual (if any), the adapter, a margin for the small files.

    Ranks are those before a ``--rank-alloc`` (the adapter is small beside the residual).
    """
    adapter = sum(4 * t.rank * (t.in_features + t.out_features) for t in targets)
    return sum(i.nbytes for i in residual) + adapter + SMALL_FILES_BYTES


def plans(infos: list[TensorInfo], targets: list[Target], max_bytes: int) -> tuple[list[list[Planned]], list[Planned]]:
    residual = [Planned(i.name, dtype_code(i.dtype), tuple(i.shape), i.nbytes) for i in infos]
    adapter = []
    for t in targets:
        r = t.rank
        adapter.append(Planned(lora_key(t.module, "A"), "F32", (r, t.in_features), 4 * r * t.in_features))
        adapter.append(Planned(lora_key(t.module, "B"), "F32", (t.out_features, r), 4 * r * t.out_features))
    return plan_shards(residual, max_bytes) if infos else [], adapter


def stream(
    ckpt: Checkpoint,
    infos: list[TensorInfo],
    targets: list[Target],
    spec: MethodSpec,
    opts: InitOptions,
    req: InitRequest,
    device: torch.device,
    tmp: Path,
    progress: Progress,
    read_order: list[TensorInfo] | None = None,
    share: Share | None = None,
    kept: list[tuple[str, torch.Tensor]] | None = None,
) -> tuple[list[LayerInit], dict[str, float], list[str]]:
    """Read every tensor once (in ``read_order``, default the checkpoint's), initialise the targets, write the
    residual and the adapter as it goes; the files keep the checkpoint's order whatever the reading order.

    With ``keeps_base`` only the targets are read and only the adapter is written (no residual, no index).
    With a distributed ``share``, only this rank's shard files are read and written, and the factors go into
    ``kept`` for rank 0 (:func:`svdtool.commands.init_distributed.finish` writes the adapter and the index).
    """
    import torch

    by_name = {t.info.name: t for t in targets}
    order = read_order or infos
    if spec.keeps_base:
        infos = [i for i in infos if i.name in by_name]
        order = [i for i in order if i.name in by_name]
    shards, adapter_plan = plans([] if spec.keeps_base else infos, targets, req.max_shard_bytes)
    names = shard_names(len(shards)) if shards else []
    adapter_dir = tmp / adapter_dirname(spec.name)
    distributed = share is not None and share.world.distributed
    mine = list(range(len(shards)))
    if distributed:
        assert share is not None
        mine, owned = owned_tensors(share, shards)
        infos = [i for i in infos if i.name in owned]
        order = [i for i in order if i.name in owned]
    # Per-input work (CorDA's ridge and LU) once per input that several targets read, freed after its last one.
    shared = SharedInputs(req.statistics, [by_name[i.name] for i in order if i.name in by_name], spec.prepare, device)
    residual = ShardSet(tmp, [shards[k] for k in mine], [names[k] for k in mine]) if mine else None
    adapter = None
    if not distributed:
        adapter_dir.mkdir()
        adapter = ShardSet(adapter_dir, [adapter_plan], [ADAPTER_WEIGHTS])
    writers = Writers()
    biggest = max(t.info.nbytes for t in targets)
    copier = HostCopier(device, biggest) if device.type == "cuda" else None
    reader = Prefetcher(ckpt, order, lambda i: device if i.name in by_name else None)
    layers: list[LayerInit] = []
    check = TimedCheck()
    read_s = math_s = 0.0
    progress.start(f"{spec.name} r={opts.rank}", len(infos), sum(i.nbytes for i in infos))
    sets = [x for x in (residual, adapter) if x is not None]
    # float32 products (randomized SVD) must not silently run in TF32.
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    ok = False
    try:
        for info, tensor, seconds in reader:
            read_s += seconds
            t = by_name.get(info.name)
            if t is None:
                assert residual is not None  # keeps_base streams the targets only
                writers.submit(residual.write, info.name, tensor)
            else:
                check.require(tensor, info.name)  # before any math: one reduction on the device
                # The lookup may wait for the estimate (LoRA-GA's overlapped stream): not under the lock.
                grad = lookup_gradient(req.gradients, t) if spec.needs_gradient and req.gradients else None
                t0 = time.perf_counter()
                with cuda_graphs.exclusive():  # never beside a capture of the calibration passes
                    if grad is not None:
                        grad = gradient_for(grad, t, device)
                    # Not bound to a name: a shared input's last target frees it as soon as its math is done.
                    record, a, b, stored = init_layer(
                        t, tensor, spec, opts, grad, shared(t) if spec.statistic else None
                    )
                    fetch = copier.copy(stored) if copier is not None and residual is not None else None
                    a_host, b_host = a.cpu(), b.cpu()
                layers.append(record)
                if residual is None:
                    pass  # the base is untouched: W_res is W and is not written
                elif fetch is not None:
                    writers.submit(_write_fetched, residual, info.name, fetch)
                else:
                    writers.submit(residual.write, info.name, stored)
                for key, factor in ((lora_key(t.module, "A"), a_host), (lora_key(t.module, "B"), b_host)):
                    if adapter is not None:
                        writers.submit(adapter.write, key, factor)
                    elif kept is not None:
                        kept.append((key, factor))  # for rank 0
                math_s += time.perf_counter() - t0
            progress.advance(info.name, info.nbytes)
        ok = True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
        reader.close()
        progress.finish()
        _close(writers, *sets, raise_errors=ok)
    position = {t.info.name: k for k, t in enumerate(targets)}
    layers.sort(key=lambda x: position[x.name])  # checkpoint order, whatever the reading order
    if residual is not None and not distributed:
        atomic_write_bytes(tmp / INDEX_NAME, (json.dumps(residual.index(), indent=2) + "\n").encode())
    timings = {
        "read": round(read_s, 4),
        "check": round(check.seconds, 4),
        "math": round(math_s, 4),
        "write": round(writers.seconds, 4),
    }
    if spec.prepare is not None:
        timings["inputs"] = round(shared.seconds, 4)  # the shared per-input work, part of "math"
    return layers, timings, names


def _write_fetched(out: ShardSet, name: str, fetch: Callable[[], tuple[torch.Tensor, Callable[[], None]]]) -> None:
    host, release = fetch()
    try:
        out.write(name, host)
    finally:
        release()


def _close(writers: Writers, *sets: ShardSet, raise_errors: bool) -> None:
    """Join the writers and close the files; on the error path, only clean up (the first error wins)."""
    failed = False
    try:
        writers.close(cancel=not raise_errors)  # the output of a failed run is deleted: skip queued writes
    except Exception:
        failed = True  # a write failed: the tensors it did not write are no news
        if raise_errors:
            raise
    finally:
        for shard_set in sets:
            try:
                shard_set.close()
            except ValueError:
                if raise_errors and not failed:
                    raise
