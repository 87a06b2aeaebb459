"""Input-covariance accumulators for the target layers, and which targets share one input.

Two statistics, both (in, in) and accumulated in float64 from float32 products (TF32 off, except where it is exact):

* ``corda``: PEFT's ``preprocess_corda`` hook. Per sample (one forward pass each), X (T, in) in float32
  and its |max X| (the *signed* maximum's absolute value, as PEFT); X̃ᵀX̃ = XᵀX/|max X|² (scaled in float64)
  is added; C = Σ X̃ᵀX̃ / samples. No token is masked (PEFT masks none). PEFT divides X before the product;
  the two differ by float32 rounding. The product of a bf16/fp16 X runs on the tensor cores, exactly
  (:func:`gram32`).
* ``centred``: EVA's data. Only the tokens with attention mask 1 and label ≠ −100; with a fixed shift
  m (the first batch's mean, to avoid cancellation) it keeps n, Σ(x − m) and Σ(x − m)(x − m)ᵀ, and
  C = (Σ(x−m)(x−m)ᵀ − n·μ'μ'ᵀ)/(n − 1), μ' = mean − m: the exact centred covariance (PEFT's PCA divides by n − 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from svdtool.errors import SvdtoolError

if TYPE_CHECKING:
    import torch
    from torch import nn

STATISTICS = ("corda", "centred")


@contextmanager
def exact_tf32(x: torch.Tensor) -> Iterator[None]:
    """TF32 tensor cores for products of ``x`` on CUDA when that is exact: bf16 and fp16 values (8 and 11 significant
    bits) are TF32 values (11 bits), so their products are exact in float32 and only the float32 accumulation rounds,
    as in a float32 GEMM, at ≈ 7× its speed on an H100/H200. Other dtypes keep TF32 off (the caller's setting)."""
    import torch

    if x.device.type != "cuda" or x.dtype not in (torch.bfloat16, torch.float16):
        yield
        return
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def gram32(x: torch.Tensor) -> torch.Tensor:
    """XᵀX (in, in) in float32 for X (T, in): float32 accumulation; for a bf16/fp16 X on CUDA on TF32 tensor
    cores, exactly (:func:`exact_tf32`).

    (``torch.mm(..., out_dtype=torch.float32)`` on the bf16 X itself would skip the float32 copy, but on an H200
    with torch 2.11 it missed float32 accuracy in our test: not used.)
    """
    with exact_tf32(x):
        xf = x.float()
        return xf.T @ xf


class CordaCovariance:
    """Σ over samples of X̃ᵀX̃, X̃ = X/|max X| per sample (float32 product, float64 sum)."""

    def __init__(self, width: int, device: torch.device) -> None:
        import torch

        self.sum = torch.zeros(width, width, dtype=torch.float64, device=device)
        self.samples = 0

    def add(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        import torch

        for i in range(x.shape[0]):  # one sample at a time, as PEFT's batch-size-1 hook
            xi = x[i] if mask is None else x[i][mask[i]]
            peak = abs(float(torch.max(xi)))  # PEFT's |max X|, the signed maximum's absolute value
            if not (math.isfinite(peak) and peak > 0):
                raise SvdtoolError(
                    "CorDA: a calibration sample gives a zero or non-finite layer input (|max X| = 0): "
                    "check the --calib samples"
                )
            # X̃ᵀX̃ = XᵀX / |max X|²: the float32 product scaled and added in float64, in one pass over the sum
            self.sum.add_(gram32(xi), alpha=1.0 / (peak * peak))
            self.samples += 1

    def result(self) -> torch.Tensor:
        import torch

        if not bool(torch.isfinite(self.sum).all()):  # an input with inf/NaN below its maximum, or an overflow
            raise SvdtoolError(
                "CorDA: a calibration sample gives a non-finite layer input covariance: check the --calib samples"
            )
        return self.sum / max(self.samples, 1)

    @property
    def count(self) -> int:
        return self.samples


class CentredCovariance:
    """n, Σ(x − m), Σ(x − m)(x − m)ᵀ over the masked tokens (float32 products, float64 sums)."""

    def __init__(self, width: int, device: torch.device) -> None:
        import torch

        self.n = 0
        self.shift: torch.Tensor | None = None
        self.s1 = torch.zeros(width, dtype=torch.float64, device=device)
        self.s2 = torch.zeros(width, width, dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        import torch

        rows = x.reshape(-1, x.shape[-1]) if mask is None else x[mask]  # (n_b, in)
        if rows.shape[0] == 0:
            return
        rows = rows.float()
        if self.shift is None:
            self.shift = rows.mean(dim=0)
        rows = rows - self.shift
        self.n += rows.shape[0]
        self.s1 += rows.sum(dim=0, dtype=torch.float64)
        self.s2 += (rows.T @ rows).double()

    def result(self) -> torch.Tensor:
        import torch

        if self.n < 2:
            raise SvdtoolError(
                f"EVA: only {self.n} calibration token(s) count (attention mask set, label ≠ −100): "
                "use more --calib data"
            )
        mu = self.s1 / self.n
        return (self.s2 - self.n * torch.outer(mu, mu)) / (self.n - 1)

    @property
    def count(self) -> int:
        return self.n


def accumulator(kind: str, width: int, device: torch.device) -> CordaCovariance | CentredCovariance:
    if kind == "corda":
        return CordaCovariance(width, device)
    if kind == "centred":
        return CentredCovariance(width, device)
    raise ValueError(f"unknown statistic {kind!r}; expected one of {', '.join(STATISTICS)}")


def shared_inputs(model: nn.Module, modules: dict[str, nn.Module], run: Callable[[], Any]) -> list[list[str]]:
    """Targets grouped by the input tensor they receive (q/k/v, gate/up), in ``modules`` order.

    ``run`` makes one (short) forward pass. Every input is held until the pass ends, so no two live
    tensors share an address: equal (address, shape, strides, dtype) means the very same tensor.
    """
    seen: dict[str, Any] = {}
    keep: list[Any] = []

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            keep.append(x)
            seen.setdefault(name, (x.data_ptr(), tuple(x.shape), tuple(x.stride()), x.dtype))

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in modules.items()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in modules if n not in seen]
    if missing:
        raise SvdtoolError(f"the calibration forward pass never reaches {missing[0]}: it cannot be a target here")
    groups: dict[Any, list[str]] = {}
    for name in modules:
        groups.setdefault(seen[name], []).append(name)
    keep.clear()
    return list(groups.values())
