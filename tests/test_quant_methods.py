"""LoftQ and QPiSSA math: the Gram/eigh fit, the alternations, the √(S/s) split, and PEFT's ``loftq_init``.

PEFT's ``loftq_init`` hard-codes a CUDA (or XPU) compute device. On the CPU its own source is run with that one
assignment replaced by ``"cpu"``: the rest (bitsandbytes' ``Params4bit`` on the CPU, fp32 ``torch.linalg.svd``)
is PEFT's code as shipped. On a GPU the unmodified function runs (``@pytest.mark.gpu``).
"""

from __future__ import annotations

import inspect
import textwrap
from typing import Any

import numpy as np
import pytest
import torch

from svdtool.linalg import factorize
from svdtool.methods import InitOptions, get_method
from svdtool.methods.quantized import load_errors, settings
from svdtool.quant import nf4
from tests.helpers import assert_close, matrix_with_spectrum

SHAPES = [(96, 64), (64, 128), (128, 128)]


# bitsandbytes compiles its CPU dequantisation once per shape (seconds each): run it eagerly.
pytestmark = pytest.mark.usefixtures("eager_bitsandbytes")


def weight(shape: tuple[int, int], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A weight with a decaying spectrum, rounded to ``dtype`` and returned in float64 (as init_layer does)."""
    k = min(shape)
    w = matrix_with_spectrum(shape, 0.1 * (1.0 + np.arange(k)) ** -0.6, seed)
    return torch.from_numpy(w).to(dtype).to(torch.float64)


def run(method: str, w: torch.Tensor, r: int, alpha: float, dtype: torch.dtype, **extra: Any) -> Any:
    opts = InitOptions(rank=r, alpha=alpha, extra=extra)
    return get_method(method).fn(w, opts, source_dtype=dtype)


@pytest.mark.parametrize("shape", SHAPES)
def test_gram_eigh_matches_float64_svd(shape: tuple[int, int]) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g, dtype=torch.float64)  # flat spectrum, like a quantisation error
    t = factorize.gram_eigh(w, 8)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    assert_close(t.s, s[:8], "sigma")
    top = (u[:, :8] * s[:8]) @ vh[:8]
    assert_close(((t.u * t.s) @ t.vh - top).norm() / top.norm(), 0.0, "svd_rel")
    assert t.residual < 1e-9 and t.algorithm == "gram-eigh"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_qpissa_one_alternation_is_pissa_with_an_nf4_base(shape: tuple[int, int], dtype: torch.dtype) -> None:
    w = weight(shape, 1, dtype)
    r, alpha = 6, 24.0  # s = 4
    out = run("qpissa", w, r, alpha, dtype, quant_iters=1)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    top = (u[:, :r] * s[:r]) @ vh[:r]
    delta = (alpha / r) * out.lora_B.double() @ out.lora_A.double()
    assert_close((delta - top).norm() / top.norm(), 0.0, "factor_rel")
    assert torch.equal(out.residual, (w - delta).to(dtype).double())  # W − s·B·A, rounded once
    assert out.meta["quant_ratio"] < 1.0


@pytest.mark.parametrize("method", ["loftq", "qpissa"])
def test_split_makes_alpha_irrelevant(method: str) -> None:
    """s·B·A and Q(W_res) do not depend on α (PEFT's loftq_init is right for α = r only)."""
    w = weight((96, 64), 2)
    outs = [run(method, w, 4, alpha, torch.float32, quant_iters=3) for alpha in (4.0, 1.0, 16.0)]
    deltas = [(a / 4) * o.lora_B.double() @ o.lora_A.double() for a, o in zip((4.0, 1.0, 16.0), outs, strict=True)]
    for o, d in zip(outs[1:], deltas[1:], strict=True):
        assert_close((d - deltas[0]).norm() / deltas[0].norm(), 0.0, "factor_rel")
        assert abs(o.meta["quant_ratio"] - outs[0].meta["quant_ratio"]) < 1e-5


@pytest.mark.parametrize("method", ["loftq", "qpissa"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_alternations_and_recorded_errors(method: str, double_quant: bool) -> None:
    w = weight((128, 128), 3, torch.bfloat16)
    ratios = []
    for iters in (1, 3):
        out = run(method, w, 8, 8.0, torch.bfloat16, quant_iters=iters, double_quant=double_quant)
        cfg = settings({"double_quant": double_quant}).config
        err, plain = load_errors(w, out.residual.to(torch.bfloat16), out.lora_A, out.lora_B, 1.0, cfg)
        assert_close(err, out.meta["quant_error"], "exact64")
        assert_close(plain, out.meta["nf4_error"], "exact64")
        ratios.append(out.meta["quant_ratio"])
    assert ratios[-1] < ratios[0] < 1.0  # alternating helps, and every init beats plain NF4


def test_loftq_fits_the_error_of_the_final_quantisation() -> None:
    w = weight((96, 64), 4)
    out = run("loftq", w, 5, 5.0, torch.float32, quant_iters=3)
    deq = nf4.fake_quantize(out.residual.float()).double()
    u, s, vh = torch.linalg.svd(w - deq, full_matrices=False)
    top = (u[:, :5] * s[:5]) @ vh[:5]
    delta = out.lora_B.double() @ out.lora_A.double()
    assert_close((delta - top).norm() / top.norm(), 0.0, "factor_rel")


def _peft_loftq_on(device: str) -> Any:
    """PEFT's ``loftq_init`` with its compute device replaced by ``device`` (see the module docstring)."""
    from peft.utils import loftq_utils

    src = textwrap.dedent(inspect.getsource(loftq_utils.loftq_init))
    line = 'compute_device = "xpu" if is_xpu_available() else "cuda"'
    assert src.count(line) == 1, "PEFT's loftq_init changed: update this test"
    src = src.replace(line, f'compute_device = "{device}"').replace("@torch.no_grad()\n", "")
    scope = dict(vars(loftq_utils))
    exec(compile(src, "<peft loftq_init, compute device replaced>", "exec"), scope)
    return torch.no_grad()(scope["loftq_init"])


@pytest.mark.parametrize("iters", [1, 2])
@pytest.mark.parametrize("shape", [(96, 64), (64, 128)])
def test_loftq_equals_peft_with_alpha_equal_r(shape: tuple[int, int], iters: int) -> None:
    pytest.importorskip("bitsandbytes")
    w32 = weight(shape, 5).float()
    deq_peft, a_peft, b_peft = _peft_loftq_on("cpu")(w32, 4, 8, num_iter=iters)
    # PEFT quantises float32 without double quant through bitsandbytes' CPU path.
    out = run("loftq", w32.double(), 8, 8.0, torch.float32, quant_iters=iters, quant_backend="cpu")
    deq = nf4.fake_quantize(out.residual.float(), nf4.NF4Config(backend="cpu"))
    if iters == 1:
        assert torch.equal(deq, deq_peft)  # both quantise W itself
    else:  # the second quantisation sees W − L·R from two SVDs that agree to float32 rounding: block scales
        # move by ulps, and a rare value crosses a threshold
        assert (deq - deq_peft).norm() / deq_peft.norm() < 1e-3
    ours = out.lora_B.double() @ out.lora_A.double()
    theirs = b_peft.double() @ a_peft.double()
    assert (ours - theirs).norm() / theirs.norm() < 1e-4
    err_peft = (w32.double() - deq_peft.double() - theirs).norm() / w32.double().norm()
    assert abs(out.meta["quant_error"] - float(err_peft)) < 1e-5 * float(err_peft)


@pytest.mark.gpu
def test_loftq_equals_peft_on_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from peft.utils.loftq_utils import loftq_init

    w32 = weight((1024, 512), 6).float()
    deq_peft, a_peft, b_peft = loftq_init(w32.cuda(), 4, 16, num_iter=1)
    out = run("loftq", w32.double().cuda(), 16, 16.0, torch.float32, quant_iters=1)
    deq = nf4.fake_quantize(out.residual.float())
    assert (deq != deq_peft).double().mean() < 1e-6  # float32 input: rcp.approx may move a rare code
    ours, theirs = out.lora_B.double() @ out.lora_A.double(), (b_peft @ a_peft).double()
    assert (ours - theirs).norm() / theirs.norm() < 1e-4
