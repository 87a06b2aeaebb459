"""bitsandbytes NF4 (``Params4bit(quant_type="nf4")``, what ``load_in_4bit`` applies), simulated bit for bit.

Quantisation of a weight x (any shape, float32/bfloat16/float16), as bitsandbytes 0.50 does it:

1. Flatten row-major (an nn.Linear weight (out, in); transformers transposes a GPT-2 Conv1D first)
   and cut into consecutive blocks of 64 (the last block may be short).
2. absmax_k = max|x| over block k in float32 (16-bit inputs are upcast exactly).
3. y = x·(1/absmax_k) in float32, and code(y) = #{i : y > T_i} (0…15), with the 15 thresholds T_i the
   CUDA kernel's decimal literals rounded once to float32 (:data:`THRESHOLD_BITS`); a value exactly on a
   threshold takes the lower code.
4. Pairs pack as byte = code(x[2j]) << 4 | code(x[2j+1]).
5. Dequantisation: NF4_CODE[q]·absmax_k in float32, rounded once (RNE) to the load dtype.

Double quantisation (``bnb_4bit_use_double_quant``): offset = mean(absmax) (float32, a torch reduction on
the device), and absmax − offset is quantised by :mod:`svdtool.quant.dynamic8` in blocks of 256; the
scale used at dequantisation becomes code8[q8]·absmax2 + offset (two float32 roundings).

Backends. ``cuda`` (default) is the CUDA kernel that GPU trainers run. ``cpu`` is bitsandbytes' CPU path,
which differs in three places: thresholds are float32 midpoints (c_i + c_{i+1})/2, one ulp off the
literals at i = 0, 8, 12, 14; an all-zero block gives codes 7 (+0.0) instead of 0 (−0.0 after
dequantisation); a short last block divides (x/absmax) instead of multiplying by the reciprocal; and its
double quantisation uses a lookup table (:mod:`svdtool.quant.dynamic8`).

Exactness. For bfloat16 and float16 inputs both backends are bit-exact (the CUDA reciprocal is
approximate, ``rcp.approx``, but it gives the same codes for 16-bit inputs). For float32 inputs the CUDA
reciprocal can move a value that sits within an ulp of a threshold: a few codes in 10⁸ may differ. The
double-quant offset is a device reduction, so on the CPU it can differ in the last bit from a GPU's for
tensors of 16 M weights and more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from svdtool.quant import dynamic8

if TYPE_CHECKING:
    import torch

#: The 16 NF4 values (``create_normal_map(offset=0.9677083)``), as float32.
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
#: The CUDA kernel's thresholds (``dQuantizeNF4``), each decimal literal rounded once to float32.
THRESHOLD_BITS = (
    0xBF591CD9, 0xBF1C5270, 0xBEEB8480, 0xBEADEA76, 0xBE703CEC, 0xBE0D38BC, 0xBD3A7871, 0x3D22FAFF,
    0x3DF64863, 0x3E5067E0, 0x3E9582D4, 0x3EC753F9, 0x3F006D03, 0x3F248DAF, 0x3F5C89D9,
)  # fmt: skip
BLOCKSIZE = 64
#: Block size of the second (8-bit) quantisation of the scales.
NESTED_BLOCKSIZE = 256
BACKENDS = ("cuda", "cpu")


@dataclass(frozen=True)
class NF4Config:
    """The trainer's 4-bit load settings that change the quantised values."""

    double_quant: bool = False
    backend: str = "cuda"  # cuda | cpu (bitsandbytes' CPU path)
    blocksize: int = BLOCKSIZE


@dataclass
class NF4State:
    """One quantised tensor."""

    codes: torch.Tensor  # (n,) uint8, 0…15, row-major order of the input
    absmax: torch.Tensor  # (blocks,) float32, the scales dequantisation uses (after double quant, if on)
    raw_absmax: torch.Tensor  # (blocks,) float32, max|x| per block
    shape: tuple[int, ...]
    dtype: torch.dtype  # the input's dtype: dequantisation returns it
    offset: torch.Tensor | None = None  # double quant: mean(raw_absmax), float32 scalar
    nested_codes: torch.Tensor | None = None  # double quant: (blocks,) uint8
    nested_absmax: torch.Tensor | None = None  # double quant: (⌈blocks/256⌉,) float32
    blocksize: int = BLOCKSIZE

    def packed(self) -> torch.Tensor:
        """The bytes bitsandbytes stores: (⌈n/2⌉, 1) uint8, high nibble first."""
        import torch

        c = self.codes
        if c.numel() % 2:  # the pad is a 0 of the last block: code 7, or that block's zero code
            pad = 7 if float(self.raw_absmax[-1]) > 0 else int(c[-1])
            c = torch.cat([c, c.new_full((1,), pad)])
        return ((c[0::2] << 4) | c[1::2]).reshape(-1, 1)


def _f32(bits: tuple[int, ...], device: torch.device) -> torch.Tensor:
    import torch

    return torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32).to(device)


def code_values(device: torch.device | str = "cpu") -> torch.Tensor:
    import torch

    return torch.tensor(NF4_CODE, dtype=torch.float32, device=device)


def thresholds(backend: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """The 15 ascending float32 decision thresholds of ``backend``."""
    import torch

    if backend == "cuda":
        return _f32(THRESHOLD_BITS, torch.device(device))
    c = code_values(device)
    return (c[:-1] + c[1:]) / 2


def quantize(x: torch.Tensor, config: NF4Config | None = None) -> NF4State:
    """NF4-quantise x as bitsandbytes does under ``config`` (see the module docstring)."""
    import torch

    cfg = config or NF4Config()
    if cfg.backend not in BACKENDS:
        raise ValueError(f"unknown bitsandbytes backend {cfg.backend!r}: expected cuda or cpu")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"NF4 quantises float32, bfloat16 or float16 tensors, not {x.dtype}")
    b = cfg.blocksize
    flat = x.detach().reshape(-1).to(torch.float32)  # (n,)
    n = flat.numel()
    absmax = dynamic8.blockwise_absmax(flat, b)  # (blocks,)
    y = dynamic8.scaled(flat, absmax, b)
    if cfg.backend == "cpu" and n % b:
        full = n - n % b  # bitsandbytes' CPU path divides in the short last block, by a scale ≥ 1e-38
        absmax[-1] = absmax[-1].clamp_min(1e-38)
        y[full:] = flat[full:] / absmax[-1]
    codes = torch.bucketize(y, thresholds(cfg.backend, flat.device), right=False).to(torch.uint8)  # #{T < y}
    zero = (absmax == 0).repeat_interleave(b)[:n]  # 0·∞ = NaN in the kernel: code 0; the CPU path: 7
    codes = torch.where(zero, torch.full_like(codes, 0 if cfg.backend == "cuda" else 7), codes)
    state = NF4State(codes, absmax, absmax, tuple(x.shape), x.dtype, blocksize=b)
    if cfg.double_quant:
        offset = absmax.mean()
        q8, absmax2 = dynamic8.quantize(absmax - offset, NESTED_BLOCKSIZE, cfg.backend)
        state.offset, state.nested_codes, state.nested_absmax = offset, q8, absmax2
        state.absmax = dynamic8.dequantize(q8, absmax2, NESTED_BLOCKSIZE) + offset
    return state


def dequantize(state: NF4State, dtype: torch.dtype | None = None) -> torch.Tensor:
    """NF4_CODE[q]·scale in float32, rounded once to ``dtype`` (default: the quantised input's dtype)."""
    import torch

    n = state.codes.numel()
    scale = state.absmax.repeat_interleave(state.blocksize)[:n]
    values = code_values(state.codes.device)[state.codes.to(torch.int64)] * scale
    return values.reshape(state.shape).to(dtype or state.dtype)


def fake_quantize(x: torch.Tensor, config: NF4Config | None = None) -> torch.Tensor:
    """dequantize(quantize(x)): what a 4-bit trainer's forward pass sees instead of x, in x's dtype."""
    return dequantize(quantize(x, config))
