"""svdtool.quant.nf4 / dynamic8 against bitsandbytes itself: codes, scales, double quantisation and
dequantised values bit for bit, on random, adversarial (values on the thresholds) and exhaustive bf16 inputs.

bitsandbytes 0.50 runs on the CPU through its CPU path (``backend="cpu"``); its CUDA kernel
(``backend="cuda"``, the default) is compared on a GPU only (``@pytest.mark.gpu``). On the CPU the CUDA
flavour is checked against independent references: the kernel's decimal literals rounded exactly, and
nearest-code search for the 8-bit map.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from svdtool.quant import dynamic8, nf4

bnb_f = pytest.importorskip("bitsandbytes.functional")


# bitsandbytes compiles its CPU dequantisation once per shape (seconds each): run it eagerly.
pytestmark = pytest.mark.usefixtures("eager_bitsandbytes")


#: ``dQuantizeNF4``'s decimal literals (bitsandbytes csrc/kernels.cu), ascending.
KERNEL_LITERALS = (
    "-0.8480964004993439", "-0.6106329262256622", "-0.4599952697753906", "-0.33967943489551544",
    "-0.23460740596055984", "-0.13791173323988914", "-0.045525018125772476", "0.03979014977812767",
    "0.1202552504837513", "0.2035212516784668", "0.2920137718319893", "0.3893125355243683",
    "0.5016634166240692", "0.6427869200706482", "0.8614784181118011",
)  # fmt: skip
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def bits(t: torch.Tensor) -> torch.Tensor:
    """Raw bits, so that −0.0 ≠ +0.0 and every ulp counts."""
    view = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[t.dtype]
    return t.contiguous().view(view)


def nearest_f32(decimal: str) -> np.float32:
    """The float32 nearest to a decimal string, rounded once (ties to even), by exact rational arithmetic."""
    q = Fraction(decimal)
    f = np.float32(float(q))
    cands = [np.nextafter(f, np.float32(-2)), f, np.nextafter(f, np.float32(2))]
    return min(cands, key=lambda c: (abs(Fraction(float(c)) - q), int(np.float32(c).view(np.uint32)) & 1))


def assert_same_as_bnb(x: torch.Tensor, double_quant: bool) -> None:
    """svdtool's CPU flavour == bitsandbytes on the CPU: bytes, scales, nested state, dequantised bits."""
    packed, qs = bnb_f.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    st = nf4.quantize(x, nf4.NF4Config(double_quant=double_quant, backend="cpu"))
    assert torch.equal(packed.view(-1), st.packed().view(-1)), "packed codes"
    if double_quant:
        assert torch.equal(qs.absmax, st.nested_codes), "nested 8-bit codes"
        assert torch.equal(bits(qs.state2.absmax), bits(st.nested_absmax)), "nested absmax"
        assert torch.equal(bits(qs.offset.reshape(1)), bits(st.offset.reshape(1))), "offset"
    else:
        assert torch.equal(bits(qs.absmax), bits(st.absmax)), "absmax"
    assert torch.equal(bits(bnb_f.dequantize_4bit(packed, qs)), bits(nf4.dequantize(st))), "dequantised"


def test_codebooks_match_bitsandbytes() -> None:
    assert torch.equal(nf4.code_values(), bnb_f.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(dynamic8.dynamic_map(), bnb_f.create_dynamic_map())


def test_cuda_thresholds_are_the_kernel_literals_rounded_once() -> None:
    expected = np.array([nearest_f32(s) for s in KERNEL_LITERALS], dtype=np.float32)
    assert np.array_equal(nf4.thresholds("cuda").numpy().view(np.uint32), expected.view(np.uint32))
    # Rounding through float64 (numpy's float32(float)) lands one ulp off at i = 0, 8, 12, 14.
    twice = [i for i, (s, e) in enumerate(zip(KERNEL_LITERALS, expected, strict=True)) if np.float32(float(s)) != e]
    assert twice == [0, 8, 12, 14]
    # The CPU path's float32 midpoints are one ulp off the literals at i = 0, 8, 12, 14, and equal elsewhere.
    diff = (nf4.thresholds("cuda") != nf4.thresholds("cpu")).nonzero().flatten().tolist()
    assert diff == [0, 8, 12, 14]


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 128), (33, 70), (3, 5), (300, 257)])
def test_random_tensors_bit_exact(shape: tuple[int, int], dtype: torch.dtype, double_quant: bool) -> None:
    g = torch.Generator().manual_seed(hash((shape, double_quant)) % 2**31)
    x = torch.randn(shape, generator=g) * torch.exp(torch.randn(shape[0], 1, generator=g))
    x.view(-1)[:64] = 0  # an all-zero block
    x.view(-1)[64:128] = 0.0 * x.view(-1)[64:128] - 1e-30  # a block of tiny values
    assert_same_as_bnb(x.to(dtype), double_quant)


@pytest.mark.parametrize("double_quant", [False, True])
def test_heavy_tailed_scales_double_quant(double_quant: bool) -> None:
    """Block scales spread over many decades: every part of the 8-bit dynamic map is used."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4096, 64, generator=g) * torch.exp(4 * torch.randn(4096, 1, generator=g))
    assert_same_as_bnb(x.reshape(256, 1024).to(torch.bfloat16), double_quant)


def adversarial(backend: str, dtype: torch.dtype) -> torch.Tensor:
    """Blocks whose absmax is 1 or random, holding the thresholds and their ±3-ulp neighbours."""
    t = nf4.thresholds(backend)
    both = torch.cat([nf4.thresholds("cuda"), nf4.thresholds("cpu"), nf4.code_values()])
    near = [both]
    for direction in (2.0, -2.0):
        cur = both
        for _ in range(3):
            cur = torch.nextafter(cur, torch.full_like(cur, direction))
            near.append(cur)
    y = torch.cat(near + [t, -t])  # (m,)
    g = torch.Generator().manual_seed(7)
    blocks = []
    for scale in [torch.ones(1), torch.rand(40, generator=g) * 10]:
        for a in scale:
            v = (y * a).to(dtype).to(torch.float32)
            v = v[: (v.numel() // 63) * 63].reshape(-1, 63)
            blocks.append(torch.cat([torch.full((v.shape[0], 1), float(a.to(dtype))), v], dim=1))
    return torch.cat(blocks).reshape(-1, 64).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adversarial_values_on_thresholds(dtype: torch.dtype) -> None:
    for backend in ("cpu", "cuda"):
        assert_same_as_bnb(adversarial(backend, dtype), double_quant=False)
        assert_same_as_bnb(adversarial(backend, dtype), double_quant=True)


def test_on_threshold_takes_lower_code_and_flavours_differ_only_between_midpoint_and_literal() -> None:
    for backend in ("cuda", "cpu"):
        t = nf4.thresholds(backend)
        above = torch.nextafter(t, torch.full_like(t, 2.0))
        x = torch.cat([torch.ones(1), t, above, torch.zeros(64 - 1 - 30)]).reshape(1, 64)
        codes = nf4.quantize(x, nf4.NF4Config(backend=backend)).codes[1:31].tolist()
        assert codes == list(range(15)) + list(range(1, 16))
    # Absmax 1: y = x exactly. Only the values in [min(Tcuda, Tcpu), max) can get different codes.
    x = adversarial("cuda", torch.float32)
    cu = nf4.quantize(x, nf4.NF4Config(backend="cuda")).codes
    cp = nf4.quantize(x, nf4.NF4Config(backend="cpu")).codes
    lo = torch.minimum(nf4.thresholds("cuda"), nf4.thresholds("cpu"))
    hi = torch.maximum(nf4.thresholds("cuda"), nf4.thresholds("cpu"))
    flat = x.reshape(-1)
    y = dynamic8.scaled(flat, dynamic8.blockwise_absmax(flat, 64), 64)  # x·(1/absmax), as quantised
    in_gap = ((y[:, None] >= lo) & (y[:, None] <= hi)).any(1)
    assert torch.equal(cu[~in_gap], cp[~in_gap])
    assert (cu != cp).any()  # the adversarial set does reach the gap


def all_bf16_pairs() -> torch.Tensor:
    """Every finite bf16 x with |x| ≤ a, for each of the 128 bf16 absmax mantissas a ∈ [0.5, 1): blocks of 64
    whose first element is a (so it is the block's absmax)."""
    every = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    every = every[torch.isfinite(every)]
    rows = []
    for m in range(128):
        a = float(torch.tensor(0.5 + m / 256, dtype=torch.bfloat16))
        v = every[every.abs() <= a]
        v = torch.cat([v, v.new_zeros((-v.numel()) % 63)]).reshape(-1, 63)
        rows.append(torch.cat([torch.full((v.shape[0], 1), a), v], dim=1))
    return torch.cat(rows).to(torch.bfloat16)


def test_exhaustive_bf16_both_flavours() -> None:
    x = all_bf16_pairs()  # about 4 M values
    assert_same_as_bnb(x, double_quant=True)
    # No bf16 value times a bf16 scale's reciprocal falls in the one-ulp gaps between the two flavours'
    # thresholds, so for bf16 weights the CUDA flavour equals bitsandbytes' CPU path too.
    cu = nf4.quantize(x, nf4.NF4Config(backend="cuda", double_quant=True))
    cp = nf4.quantize(x, nf4.NF4Config(backend="cpu", double_quant=True))
    assert torch.equal(cu.codes, cp.codes)


def test_cuda_8bit_search_is_nearest_code() -> None:
    """``dQuantize<0>``'s binary search gives the nearest of the 256 codes (ties aside)."""
    g = torch.Generator().manual_seed(5)
    y = torch.cat([torch.rand(200_000, generator=g) * 2 - 1, (torch.rand(50_000, generator=g) - 0.5) * 1e-5])
    y = torch.cat([torch.ones(1), y])[: (y.numel() // 256) * 256]
    q, absmax = dynamic8.quantize(y, 256, "cuda")
    code = dynamic8.dynamic_map().double()
    d = (dynamic8.scaled(y, absmax, 256).double()[:, None] - code[None, :]).abs()
    best = d.argmin(1)
    two = d.topk(2, dim=1, largest=False).values
    clear = (two[:, 1] - two[:, 0]) > 1e-12
    assert torch.equal(q.long()[clear], best[clear])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_flavour_against_the_cuda_kernel(dtype: torch.dtype) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    inputs = [adversarial("cuda", dtype), torch.randn(512, 4096, dtype=dtype)]
    if dtype == torch.bfloat16:
        inputs.append(all_bf16_pairs())
    for x in inputs:
        x = x.cuda()
        for dq in (False, True):
            packed, qs = bnb_f.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=dq)
            st = nf4.quantize(x, nf4.NF4Config(double_quant=dq, backend="cuda"))
            if dtype == torch.float32:  # the kernel's rcp.approx can move a value within an ulp of a threshold
                assert (packed.view(-1) != st.packed().view(-1)).double().mean() < 1e-3
                continue
            assert torch.equal(packed.view(-1), st.packed().view(-1))
            assert torch.equal(bits(bnb_f.dequantize_4bit(packed, qs)), bits(nf4.dequantize(st)))
