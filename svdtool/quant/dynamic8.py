"""bitsandbytes' blockwise 8-bit quantiser with the signed dynamic map: what NF4 double quantisation
(``bnb_4bit_use_double_quant``) applies to the NF4 block scales. Pure torch, bit-exact.

Map (``create_dynamic_map(signed=True)``, Dettmers 2015): for i = 0…6, the 2^i midpoints of
``linspace(0.1, 1, 2^i + 1)`` (float32) times ±10^(i−6); plus 0 and 1; sorted, 256 float32 codes.

Quantisation of x (n,) in blocks of b: absmax_k = max|x| over block k (float32), y = x·(1/absmax_k) in
float32, and the code index is chosen by the backend the trainer runs:

* ``cuda`` (``kQuantizeBlockwise`` / ``dQuantize<0>``): a 7-step binary search from pivot 127, then
  the nearer neighbour by float32 midpoints ``(upper + val)·0.5``; NaN (an all-zero block: 0·∞) gives 0;
* ``cpu`` (bitsandbytes' C++ CPU path): a 65 536-entry table over [−1, 1]. Entry j covers
  v_j = −1 + 2j/65535 and holds #{midpoints < v_j}; y is looked up at ⌊fma((y+1)·0.5, 65535, 0.5)⌋.

Dequantisation: code[q]·absmax_k in float32.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Entries of the CPU backend's lookup table.
LUT_SIZE = 65536


@cache
def _dynamic_map_cpu() -> torch.Tensor:
    import torch

    values: list[float] = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (edges[:-1] + edges[1:]) / 2.0  # float32
        scaled = means * (10.0 ** (i - 6))  # float32 product, as the reference builds it
        values += scaled.tolist() + (-scaled).tolist()
    return torch.tensor(sorted(values), dtype=torch.float32)


def dynamic_map(device: torch.device | str = "cpu") -> torch.Tensor:
    """The 256 sorted float32 codes of the signed dynamic map."""
    return _dynamic_map_cpu().to(device)


def blockwise_absmax(x: torch.Tensor, blocksize: int) -> torch.Tensor:
    """max|x| over consecutive blocks of a flat float32 x (the last block may be short): (blocks,) float32."""
    import torch

    n = x.numel()
    full = n - n % blocksize
    parts = [x[:full].view(-1, blocksize).abs().amax(dim=1)]
    if full < n:
        parts.append(x[full:].abs().amax().reshape(1))
    return torch.cat(parts)


def scaled(x: torch.Tensor, absmax: torch.Tensor, blocksize: int) -> torch.Tensor:
    """y = x·(1/absmax) per block, float32 (the CUDA kernels' product with the block's reciprocal)."""
    inv = (1.0 / absmax).repeat_interleave(blocksize)[: x.numel()]  # (n,)
    return x * inv


def _search_cuda(y: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """``dQuantize<0>``: binary search over the sorted codes, then the nearer neighbour."""
    import torch

    pivot = torch.full_like(y, 127, dtype=torch.int64)
    lower_p = torch.zeros_like(pivot)
    upper_p = torch.full_like(pivot, 255)
    lower = torch.full_like(y, -1.0)
    upper = torch.full_like(y, 1.0)
    val = code[pivot]
    for step in (64, 32, 16, 8, 4, 2, 1):
        gt = y > val
        lower_p = torch.where(gt, pivot, lower_p)
        lower = torch.where(gt, val, lower)
        upper_p = torch.where(gt, upper_p, pivot)
        upper = torch.where(gt, upper, val)
        pivot = torch.where(gt, pivot + step, pivot - step)
        val = code[pivot]
    upper = torch.where(upper_p == 255, code[255], upper)
    lower = torch.where(lower_p == 0, code[0], lower)
    gt = y > val
    up = torch.where(y > (upper + val) * 0.5, upper_p, pivot)
    down = torch.where(y < (lower + val) * 0.5, lower_p, pivot)
    return torch.where(gt, up, down).to(torch.uint8)


@cache
def _lut_cpu() -> torch.Tensor:
    import torch

    code = _dynamic_map_cpu()
    mids = 0.5 * (code[:-1] + code[1:])  # float32
    j = torch.arange(LUT_SIZE, dtype=torch.float32)
    v = -1.0 + (2.0 * j) / float(LUT_SIZE - 1)  # float32: 2j exact, one division, one addition
    return torch.searchsorted(mids, v, side="left").to(torch.uint8)  # #{mids < v}


def _search_cpu(y: torch.Tensor) -> torch.Tensor:
    import torch

    t = (y.nan_to_num(0.0).clamp(-1.0, 1.0) + 1.0) * 0.5  # float32 (·0.5 is exact); NaN: all-zero blocks
    # ·65535 + 0.5 as one FMA (one rounding to float32), as GCC contracts it; rounding twice gives the same codes.
    idx = (t.double() * (LUT_SIZE - 1) + 0.5).to(torch.float32).to(torch.int64)  # truncation, as static_cast
    return _lut_cpu().to(y.device)[idx]


def quantize(x: torch.Tensor, blocksize: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes (n,) uint8, absmax (blocks,) float32) of a flat float32 x."""
    import torch

    if backend not in ("cuda", "cpu"):
        raise ValueError(f"unknown bitsandbytes backend {backend!r}: expected cuda or cpu")
    x = x.reshape(-1).to(torch.float32)
    absmax = blockwise_absmax(x, blocksize)
    y = scaled(x, absmax, blocksize)
    if backend == "cuda":
        return _search_cuda(y, dynamic_map(x.device)), absmax
    q = _search_cpu(y)
    zero = (absmax == 0).repeat_interleave(blocksize)[: x.numel()]
    return torch.where(zero, torch.zeros_like(q), q), absmax  # an all-zero block is written as 0


def dequantize(q: torch.Tensor, absmax: torch.Tensor, blocksize: int) -> torch.Tensor:
    """code[q]·absmax per block, float32, (n,)."""
    import torch

    code = dynamic_map(q.device)
    return code[q.to(torch.int64)] * absmax.repeat_interleave(blocksize)[: q.numel()]
