"""OLoRA, MiCA, orthogonal and LoRA-One as pure functions: float64 references, and equality with PEFT's own inits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svdtool.errors import SvdtoolError
from svdtool.linalg.sketch import LowRankGradient
from svdtool.methods import InitOptions, get_method
from tests.helpers import assert_close, matrix_with_spectrum
from tests.test_methods import SHAPES, rel, weight


def _peft_has_mica() -> bool:
    from importlib.metadata import version

    from packaging.version import Version

    return Version(version("peft")) >= Version("0.20")


#: PEFT < 0.20 has no "mica" init (and refuses the config value); pyproject allows peft >= 0.15.
NEEDS_MICA = pytest.mark.skipif(not _peft_has_mica(), reason="PEFT < 0.20 has no MiCA")


def peft_layer(w: torch.Tensor, r: int, alpha: float, init: str, conv1d: bool = False):  # type: ignore[no-untyped-def]
    """PEFT's LoRA layer after ``get_peft_model`` with ``init_lora_weights=init`` on one Linear (or Conv1D)."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    out_f, in_f = w.shape

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = Conv1D(out_f, in_f) if conv1d else torch.nn.Linear(in_f, out_f, bias=False)
            with torch.no_grad():
                self.proj.weight.copy_(w.T if conv1d else w)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x)

    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], init_lora_weights=init, fan_in_fan_out=conv1d)
    torch.manual_seed(0)
    return get_peft_model(Net(), cfg).base_model.model.proj


def factors(layer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    a, b = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    return a, b, layer.base_layer.weight.detach()


# ---------------------------------------------------------------- OLoRA
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", [6.0, 24.0])
def test_olora_equals_peft(shape: tuple[int, int], alpha: float) -> None:
    """B = Q_r, A = R_r and W_res = W − s·Q_rR_r as PEFT's olora (s ≠ 1 included: no division by s)."""
    w, r = weight(shape, seed=5), 6
    a_p, b_p, res_p = factors(peft_layer(w, r, alpha, "olora"))
    out = get_method("olora").fn(w.double(), InitOptions(rank=r, alpha=alpha))
    assert_close(out.lora_B, b_p, "fp32", "B = Q_r")
    assert_close(rel(out.lora_A, a_p), 0.0, "factor_rel", "A = R_r")
    assert_close(rel(alpha / r * out.lora_B.double() @ out.lora_A.double(), alpha / r * b_p.double() @ a_p.double()),
                 0.0, "factor_rel", "s·B·A")  # fmt: skip
    assert_close(out.residual, res_p, "fp32", "W_res")


def test_olora_float64_identities() -> None:
    w, r, s = weight((72, 48), seed=6).double(), 5, 2.0
    out = get_method("olora").fn(w, InitOptions(rank=r, alpha=s * r))
    q = out.lora_B.double()
    assert_close(q.T @ q, torch.eye(r, dtype=torch.float64), "factor_rel", "QᵀQ = I")
    q64, _ = torch.linalg.qr(w)  # full float64 QR: span of the first r columns
    proj = q64[:, :r] @ q64[:, :r].T @ w
    assert_close(rel(q @ out.lora_A.double(), proj), 0.0, "factor_rel", "B·A = Q_rQ_rᵀW")
    assert_close(rel(out.residual + s * q @ out.lora_A.double(), w), 0.0, "factor_rel", "W_res + s·B·A = W")
    assert out.meta["algorithm"] == "qr64"


def test_olora_on_gpt2_conv1d_is_peft_olora_of_the_transpose() -> None:
    """PEFT's olora factorises Conv1D's stored (in, out) weight and breaks; svdtool takes W = weightᵀ (out, in),
    which is what PEFT computes for the same layer as an nn.Linear."""
    w, r = weight((72, 48), seed=7), 4
    conv_weight = w.T.contiguous()  # as Conv1D stores it
    a_p, b_p, res_p = factors(peft_layer(w, r, 8.0, "olora"))
    out = get_method("olora").fn(conv_weight.T.double(), InitOptions(rank=r, alpha=8.0))
    assert out.lora_B.shape == (72, r) and out.lora_A.shape == (r, 48)
    assert_close(out.lora_B, b_p, "fp32", "B")
    assert_close(out.residual.T, res_p.T, "fp32", "W_res stored as Conv1D")
    with pytest.raises(RuntimeError):  # PEFT itself on the Conv1D: B gets the wrong side's shape
        layer = peft_layer(w, r, 8.0, "olora", conv1d=True)
        layer(torch.randn(2, 48))


# ---------------------------------------------------------------- MiCA
@NEEDS_MICA
@pytest.mark.parametrize("shape", SHAPES)
def test_mica_equals_peft(shape: tuple[int, int]) -> None:
    # Separated singular values: PEFT's float32 SVD resolves the minor vectors to ε₃₂·σ₁/gap.
    sigma = np.linspace(3.0, 1.0, min(shape))
    w, r = torch.from_numpy(matrix_with_spectrum(shape, sigma, 8)).float(), 6
    a_p, b_p, res_p = factors(peft_layer(w, r, 12.0, "mica"))
    out = get_method("mica").fn(w.double(), InitOptions(rank=r, alpha=12.0))
    assert torch.count_nonzero(out.lora_A) == 0 and torch.count_nonzero(a_p) == 0
    signs = torch.sign((out.lora_B * b_p).sum(0))  # singular vectors are unique up to sign
    assert_close(rel(out.lora_B * signs, b_p), 0.0, "fp32_svd", "B = U[:, -r:]")
    assert torch.equal(out.residual, w.double()) and torch.equal(res_p, w)  # base untouched
    u, sig, _ = torch.linalg.svd(w.double(), full_matrices=False)
    assert_close(torch.tensor(out.meta["sigma"], dtype=torch.float64), sig[-r:], "sigma", "the r smallest σ")


# ---------------------------------------------------------------- orthogonal
@pytest.mark.parametrize("shape", SHAPES)
def test_orthogonal_product_is_zero_and_seeded(shape: tuple[int, int]) -> None:
    w, r = weight(shape, seed=9), 8
    opts = InitOptions(rank=r, alpha=16.0, extra={"seed": 3})
    out = get_method("orthogonal").fn(w.double(), opts, name="layers.0.q_proj.weight")
    a, b = out.lora_A.double(), out.lora_B.double()
    assert out.lora_A.dtype == torch.float32 and a.shape == (r, shape[1]) and b.shape == (shape[0], r)
    # B·A = 0 up to the float32 rounding of the factors, though both are full rank r/2 … r.
    assert float((b @ a).norm() / (b.norm() * a.norm())) < 1e-6
    assert torch.linalg.matrix_rank(a) == r and torch.linalg.matrix_rank(b) == r
    assert torch.equal(out.residual, w.double())
    again = get_method("orthogonal").fn(w.double(), opts, name="layers.0.q_proj.weight")
    other = get_method("orthogonal").fn(w.double(), opts, name="layers.1.q_proj.weight")
    assert torch.equal(again.lora_A, out.lora_A) and torch.equal(again.lora_B, out.lora_B)
    assert not torch.equal(other.lora_A, out.lora_A)
    # PEFT's scale: entries of A and B have variance ≈ 1/(2·100).
    _, b_p, _ = factors(peft_layer(w, r, 16.0, "orthogonal"))
    assert 0.5 < float(b.std() / b_p.double().std()) < 2.0


def test_orthogonal_odd_rank_is_refused_like_peft() -> None:
    w = weight((40, 30))
    with pytest.raises(SvdtoolError, match="even rank"):
        get_method("orthogonal").fn(w.double(), InitOptions(rank=3, alpha=3))
    with pytest.raises(ValueError, match="even"):
        peft_layer(w, 3, 3.0, "orthogonal")


# ---------------------------------------------------------------- LoRA-One
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rslora", [False, True])
def test_lora_one_against_float64_svd(shape: tuple[int, int], rslora: bool) -> None:
    w, r, alpha, gamma = weight(shape, seed=10), 5, 16.0, 64.0
    g = weight(shape, seed=11) * 1e-3
    opts = InitOptions(rank=r, alpha=alpha, use_rslora=rslora, extra={"gamma": gamma})
    out = get_method("lora-one").fn(w.double(), opts, gradient=g)
    u, sig, vh = torch.linalg.svd(-g.double(), full_matrices=False)
    root = (sig[:r] / (sig[0] * gamma)).sqrt()
    s = opts.scaling
    step = s / (sig[0] * gamma) * (u[:, :r] * sig[:r]) @ vh[:r]  # the best rank-r step along −G
    assert_close(rel(s * out.lora_B.double() @ out.lora_A.double(), step), 0.0, "factor_rel", "s·B·A")
    a, b = out.lora_A.double(), out.lora_B.double()
    assert_close(a @ a.T, torch.diag(root**2), "factor_rel", "A·Aᵀ = S/(σ₁γ)")
    assert_close(b.T @ b, torch.diag(root**2), "factor_rel", "BᵀB = S/(σ₁γ)")
    assert torch.equal(out.residual, w.double())  # no residual: the original base
    # The same triplets as factors (sketch mode, or reduced during estimation) give the same init.
    reduced = get_method("lora-one").reducer(r, {"seed": 0})("x", g)  # type: ignore[misc]
    assert isinstance(reduced, LowRankGradient) and reduced.rank == r
    again = get_method("lora-one").fn(w.double(), opts, gradient=reduced)
    assert torch.equal(again.lora_A, out.lora_A) and torch.equal(again.lora_B, out.lora_B)


def test_lora_one_bad_inputs() -> None:
    w = weight((40, 30)).double()
    fn = get_method("lora-one").fn
    with pytest.raises(SvdtoolError, match="needs the gradient"):
        fn(w, InitOptions(rank=2, alpha=2))
    with pytest.raises(SvdtoolError, match="zero"):
        fn(w, InitOptions(rank=2, alpha=2), gradient=torch.zeros(40, 30))
    with pytest.raises(SvdtoolError, match="does not match"):
        fn(w, InitOptions(rank=2, alpha=2), gradient=torch.ones(30, 40))


def test_specs() -> None:
    assert get_method("mica").keeps_base and get_method("mica").init_lora_weights == "mica"
    assert get_method("mica").frozen == ("lora_B",)
    assert get_method("orthogonal").keeps_base and not get_method("orthogonal").changes_output
    one = get_method("lora-one")
    assert one.keeps_base and one.changes_output and one.needs_gradient and one.rank_gain == "coverage"
    assert not get_method("olora").keeps_base and get_method("olora").init_lora_weights is True
    assert get_method("pissa").rank_gain == "energy" and get_method("lora-ga").directions == 2
