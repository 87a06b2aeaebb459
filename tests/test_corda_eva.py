"""CorDA (IPM, KPM) and EVA: PEFT's own ``preprocess_corda`` / ``collect_eigens_for_layer`` on the same inputs,
float64 references written out here, the EVA rank allocation against a hand-worked example, and
``svdtool init --method corda|eva`` end to end (verify, PEFT load with is_trainable and one optimizer step)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from svdtool.methods import InitOptions, get_method
from svdtool.methods.corda import corda, ridge
from svdtool.methods.eva import allocate, principal_components
from tests.helpers import assert_close

SHAPES = [(48, 20), (20, 48), (32, 32)]
IDS = ["tall", "wide", "square"]
U32 = 2.0**-24


def _cond(c: torch.Tensor, d: float) -> float:
    """κ(C_d) in float64: PEFT's float32 inverse and SVD of W·C_d are accurate to about κ·u₃₂."""
    c = c.double()
    lam = torch.linalg.eigvalsh(c + torch.eye(c.shape[0], dtype=torch.float64) * c.diagonal().mean() * d)
    return float(lam[-1] / lam[0])


def _covariance(n: int, rank: int, seed: int) -> torch.Tensor:
    """A PSD (n, n) covariance of the given rank (rank < n: PEFT's ridge loop must double d)."""
    x = torch.randn(4 * n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x[:, rank:] = x[:, :rank] @ torch.randn(rank, n - rank, dtype=torch.float64) if rank < n else x[:, rank:]
    x = x * torch.linspace(0.2, 3.0, n, dtype=torch.float64)
    return x.T @ x / x.shape[0]


def reference_corda(w: np.ndarray, c: np.ndarray, d: float, r: int, mode: str) -> np.ndarray:
    """s·B·A = U_r S_r V_rᵀ with V = C_d⁻¹ Vh ᵀ, from numpy float64 (the formula of peft's corda.py)."""
    c_d = c + np.eye(c.shape[0]) * np.mean(np.diag(c)) * d
    u, s, vh = np.linalg.svd(w @ c_d, full_matrices=False)
    sl = slice(0, r) if mode == "ipm" else slice(len(s) - r, len(s))
    v = (vh @ np.linalg.inv(c_d)).T
    return (u[:, sl] * s[sl]) @ v[:, sl].T


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("mode", ["ipm", "kpm"])
@pytest.mark.parametrize("full_rank", [True, False], ids=["full-rank-C", "low-rank-C"])
def test_corda_layer_equals_peft_and_float64(shape: tuple[int, int], mode: str, full_rank: bool) -> None:
    """Against PEFT's ``collect_eigens_for_layer`` (float32) within κ(C_d)·u₃₂, and a numpy float64 reference
    to float32 storage of A and B."""
    out_f, in_f = shape
    w = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(out_f + in_f), dtype=torch.float64)
    c = _covariance(in_f, in_f if full_rank else in_f // 3, seed=in_f)
    _check_layer(w, c, 4, 8.0, mode)


def test_ridge_doubles_as_peft_does() -> None:
    """A wide, rank-1 covariance: PEFT's float32 test ‖C_d·C_d⁻¹ − I‖ < 0.05 fails at d = 0.01 and d doubles;
    the same d here, or the cropped s·B·A (which depends on d) would differ from PEFT's."""
    c = _covariance(1536, 1, seed=1)
    w = torch.randn(6, 1536, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert _check_layer(w, c, 2, 2.0, "ipm") == 0.02


def _check_layer(w: torch.Tensor, c: torch.Tensor, r: int, alpha: float, mode: str) -> float:
    from peft import LoraConfig
    from peft.tuners.lora.config import CordaConfig
    from peft.tuners.lora.corda import collect_eigens_for_layer

    res = corda(w, InitOptions(rank=r, alpha=alpha, extra={"corda_mode": mode}), statistics=c)
    s = alpha / r
    sba = s * res.lora_B.double() @ res.lora_A.double()
    d = res.meta["ridge"]
    out_f, in_f = w.shape

    lin = torch.nn.Linear(in_f, out_f, bias=False)
    lin.weight.data = w.float()
    lin.covariance_matrix = c.float()
    eig = collect_eigens_for_layer(lin, LoraConfig(r=r, corda_config=CordaConfig(corda_method=mode)))
    sl = slice(0, r) if mode == "ipm" else slice(len(eig.S_WC) - r, len(eig.S_WC))
    peft = (eig.U_WC[:, sl].double() * eig.S_WC[sl].double()) @ eig.V_WC[:, sl].double().T
    rel = float((sba - peft).norm() / peft.norm())
    assert rel <= 8 * _cond(c, d) * U32, (rel, _cond(c, d))

    ref = reference_corda(w.numpy(), c.numpy(), d, r, mode)
    assert_close(float((sba.numpy() - ref).__pow__(2).sum() ** 0.5 / np.linalg.norm(ref)), 0.0, "factor_rel")
    assert_close(res.residual + sba, w, "exact64")
    return d


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_wc_triplets_certify_or_fall_back(shape: tuple[int, int]) -> None:
    """IPM: the certified top-r solver. KPM: Gram eigh when certified; components far below σ₁·1e-8 (KPM of a
    near-singular W·C) take a direct SVD. Either way the singular values equal numpy's float64 SVD."""
    from svdtool.methods.corda import CERTIFY_TOL, wc_triplets
    from tests.helpers import matrix_with_spectrum

    k = min(shape)
    for sigma, kpm_algorithm in ((np.geomspace(10, 0.1, k), "gram-eigh64(W·C)"),
                                 (np.geomspace(1, 1e-14, k), "svd64(W·C)")):  # fmt: skip
        wc = torch.from_numpy(matrix_with_spectrum(shape, sigma, seed=k))
        ipm, kpm = wc_triplets(wc, 3, "ipm"), wc_triplets(wc, 3, "kpm")
        assert ipm.residual <= CERTIFY_TOL and kpm.algorithm == kpm_algorithm
        assert_close(ipm.s, sigma[:3], "sigma")
        assert_close(kpm.s, sigma[-3:], "svd_rel" if kpm_algorithm.startswith("svd64") else "sigma")


def test_ridge_refuses_a_zero_covariance() -> None:
    from svdtool.errors import SvdtoolError

    with pytest.raises(SvdtoolError, match="cannot be regularised"):
        ridge(torch.zeros(5, 5, dtype=torch.float64))


def _corda_accumulated(xs: list[torch.Tensor], device: str) -> torch.Tensor:
    from svdtool.statistics.accumulate import CordaCovariance

    acc = CordaCovariance(xs[0].shape[-1], torch.device(device))
    for x in xs:
        acc.add(x.to(device)[None], None)
    return acc.result().cpu()


def _corda_float64(xs: list[torch.Tensor]) -> torch.Tensor:
    """PEFT's C = mean over samples of X̃ᵀX̃, X̃ = X / |max X|, all in float64."""
    return sum((x.double() / x.double().max().abs()).T @ (x.double() / x.double().max().abs()) for x in xs) / len(xs)


def _samples(dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    # heavy outliers in a few channels, as real layer inputs have; a negative signed maximum in one sample
    xs = [torch.randn(96, 40, generator=gen) * torch.logspace(-2, 1, 40) for _ in range(3)]
    xs[1] = -xs[1].abs() * 3
    return [x.to(dtype) for x in xs]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_corda_covariance_against_float64(dtype: torch.dtype) -> None:
    """The accumulated C equals float64's mean of X̃ᵀX̃ to float32 rounding (X̃ divided by the signed max's |.|)."""
    xs = _samples(dtype, 3)
    got = _corda_accumulated(xs, "cpu")
    ref = _corda_float64(xs)
    assert_close((got - ref).norm() / ref.norm(), 0.0, "factor_rel")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_corda_covariance_tf32_is_exact_for_16_bit_inputs() -> None:
    """On CUDA, bf16/fp16 inputs are multiplied on TF32 tensor cores: still float32-accurate, and the caller's
    TF32 setting is restored."""
    torch.backends.cuda.matmul.allow_tf32 = False
    for dtype in (torch.bfloat16, torch.float16):
        xs = [torch.cat([x] * 40) for x in _samples(dtype, 4)]  # T = 3840 tokens: a long float32 accumulation
        got = _corda_accumulated(xs, "cuda")
        ref = _corda_float64(xs)
        assert_close((got - ref).norm() / ref.norm(), 0.0, "factor_rel")
        assert torch.backends.cuda.matmul.allow_tf32 is False


@pytest.mark.parametrize("bad", ["zero", "nan", "neg_inf"])
def test_corda_covariance_refuses_a_zero_or_non_finite_input(bad: str) -> None:
    """|max X| = 0 or NaN/inf stops at once; −inf below a finite maximum overflows the sum and stops at the end."""
    from svdtool.errors import SvdtoolError

    xs = _samples(torch.float32, 5)
    xs[1] = torch.zeros_like(xs[1]) if bad == "zero" else xs[1].clone()
    if bad != "zero":
        xs[1][3, 7] = float("nan") if bad == "nan" else float("-inf")
    with pytest.raises(SvdtoolError, match=r"^CorDA: a calibration sample gives a (zero or )?non-finite layer input"):
        _corda_accumulated(xs, "cpu")


# ---------------------------------------------------------------- PEFT's preprocess_corda on a real forward
def _peft_corda(model: Any, items: list[Any], mode: str, r: int, alpha: float, targets: list[str]) -> Any:
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.config import CordaConfig
    from peft.tuners.lora.corda import preprocess_corda

    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights="corda",
                     corda_config=CordaConfig(corda_method=mode, prune_temporary_fields=False))  # fmt: skip

    def run() -> None:
        for e in items:  # PEFT's documented loop: one sample per forward
            model(input_ids=torch.tensor([e.input_ids]))

    preprocess_corda(model, cfg, run_model=run)
    covs = {n: m.covariance_matrix.clone() for n, m in model.named_modules() if hasattr(m, "covariance_matrix")}
    return get_peft_model(model, cfg), covs


@pytest.mark.parametrize(("kind", "mode"), [("llama", "ipm"), ("llama", "kpm"), ("gpt2", "kpm")])
def test_corda_statistics_and_init_equal_peft(lora_ga_tiny: dict, kind: str, mode: str) -> None:
    """Same texts: our covariances equal PEFT's (float64 sums of the same float32 products), shared inputs are
    found (q/k/v, gate/up), and s·B·A and W_res equal PEFT's preprocess_corda + get_peft_model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from svdtool.calibration import CalibRequest, prepare_calibration
    from svdtool.statistics import ActivationRequest, collect_statistics

    src = lora_ga_tiny[kind]
    calib = CalibRequest(str(lora_ga_tiny["text"]), samples=24, max_length=24)
    req = ActivationRequest(str(src), calib, statistic="corda", device="cpu")
    stats = collect_statistics(req, lambda names, c, n: c)
    if kind == "llama":
        assert [len(g) for g in stats.groups] == [3, 1, 2, 1] * 2  # q/k/v, o, gate/up, down per block
    items = prepare_calibration(calib, AutoTokenizer.from_pretrained(str(src))).items
    model = AutoModelForCausalLM.from_pretrained(str(src)).eval()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    targets = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"] if kind == "llama" else ["c_attn", "c_fc"]
    r, alpha = 3, 6.0
    peft_model, covs = _peft_corda(copy.deepcopy(model), items, mode, r, alpha, targets)
    checked = 0
    for name, mod in peft_model.named_modules():
        if not hasattr(mod, "lora_A"):
            continue
        tensor = name.removeprefix("base_model.model.") + ".weight"
        assert_close(stats.values[tensor], covs[name.removeprefix("base_model.model.")].double(), "fp32")
        w = weights[tensor].double()
        w = w.T if kind == "gpt2" else w  # Conv1D stores (in, out)
        res = get_method("corda").fn(w, InitOptions(rank=r, alpha=alpha, extra={"corda_mode": mode}),
                                     statistics=stats.values[tensor])  # fmt: skip
        s = alpha / r
        ours = s * res.lora_B.double() @ res.lora_A.double()
        a, b = mod.lora_A["default"].weight.double(), mod.lora_B["default"].weight.double()
        theirs = s * b @ a
        bound = 8 * _cond(stats.values[tensor], res.meta["ridge"]) * U32
        assert float((ours - theirs).norm() / theirs.norm()) <= bound, tensor
        base = mod.base_layer.weight.double()
        base = base.T if kind == "gpt2" else base
        assert float((res.residual - base).norm() / w.norm()) <= bound, tensor
        checked += 1
    assert checked == (10 if kind == "llama" else 4)


# ---------------------------------------------------------------- EVA
def test_eva_allocation_hand_worked() -> None:
    """Layers a, b share one input (a hooked); ratios a = b = (.50 .30 .10 .05), c = (.60 .25 .10 .05),
    d = (.45 .20 .15 .10).

    1. r = 2 each, ρ = 2: 4 candidates each, budget 8. Largest first: c .60, a .50, b .50, d .45, a .30,
       b .30, c .25, d .20 → 2 each.
    2. r = 1 each, ρ = 2: 2 candidates each, budget 4: c .60, a .50, b .50, d .45 → 1 each.
    3. c = (.9 .8 .7 .6), d = (.04 .03 .01 0), r = 2, ρ = 2: c .9 .8 .7 .6, a .5, b .5, a .3, b .3 → c 4,
       a 2, b 2, d 0 (dropped).
    4. As 3 with r_a = 2, r_b = r_c = r_d = 1 (budget 5): a and b get max(4, 2) = 4 candidates, c and d 2:
       c .9 .8, a .5, b .5, a .3 → a 2, b 1, c 2, d 0.
    5. ρ = 1 with equal ratios everywhere: every layer keeps its r.
    """
    t = torch.tensor
    shared = t([0.50, 0.30, 0.10, 0.05], dtype=torch.float64)
    ratios = {"a": shared, "b": shared, "c": t([0.60, 0.25, 0.10, 0.05]), "d": t([0.45, 0.20, 0.15, 0.10])}
    groups = [["a", "b"], ["c"], ["d"]]
    assert allocate(ratios, dict.fromkeys("abcd", 2), groups, 2.0) == {"a": 2, "b": 2, "c": 2, "d": 2}
    assert allocate(ratios, dict.fromkeys("abcd", 1), groups, 2.0) == {"a": 1, "b": 1, "c": 1, "d": 1}
    skewed = {**ratios, "c": t([0.9, 0.8, 0.7, 0.6]), "d": t([0.04, 0.03, 0.01, 0.0])}
    assert allocate(skewed, dict.fromkeys("abcd", 2), groups, 2.0) == {"a": 2, "b": 2, "c": 4, "d": 0}
    assert allocate(skewed, {"a": 2, "b": 1, "c": 1, "d": 1}, groups, 2.0) == {"a": 2, "b": 1, "c": 2, "d": 0}
    flat = dict.fromkeys("abcd", t([0.4, 0.3, 0.2, 0.1]))
    assert allocate(flat, dict.fromkeys("abcd", 2), [["a"], ["b"], ["c"], ["d"]], 1.0) == dict.fromkeys("abcd", 2)


def test_eva_components_against_an_independent_float64_covariance(lora_ga_tiny: dict) -> None:
    """Collect the masked inputs of two layers with our own hooks, np.cov in float64, eigh: the components
    (PEFT's sign rule) and ratios equal ours; prompt tokens (label −100) and padding are left out."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from svdtool.calibration import CalibRequest, prepare_calibration
    from svdtool.calibration.encode import collate
    from svdtool.statistics import ActivationRequest, collect_statistics

    src = lora_ga_tiny["llama"]
    calib = CalibRequest(str(lora_ga_tiny["qa"]), samples=16, max_length=32, batch_size=4)
    req = ActivationRequest(str(src), calib, statistic="centred", device="cpu", targets=["q_proj", "down_proj"])
    stats = collect_statistics(req, lambda names, c, n: principal_components(c, 6, n))
    tok = AutoTokenizer.from_pretrained(str(src))
    items = prepare_calibration(calib, tok).items
    model = AutoModelForCausalLM.from_pretrained(str(src)).eval()
    rows: dict[str, list[np.ndarray]] = {}
    names = {"model.layers.1.self_attn.q_proj": None, "model.layers.0.mlp.down_proj": None}
    mask: list[torch.Tensor] = []

    def hook(name: str) -> Any:
        return lambda m, args: rows.setdefault(name, []).append(args[0][mask[0]].double().numpy())

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    with torch.no_grad():
        for i in range(0, len(items), 4):
            batch = collate(items[i : i + 4], tok.pad_token_id)
            mask[:] = [batch["attention_mask"].bool() & (batch["labels"] != -100)]
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for h in handles:
        h.remove()
    for name in names:
        x = np.concatenate(rows[name])
        lam, q = np.linalg.eigh(np.cov(x, rowvar=False))
        lam, q = lam[::-1], q[:, ::-1]
        ours = stats.values[name + ".weight"]
        assert ours.tokens == x.shape[0] < sum(len(e.input_ids) for e in items)
        for i in range(6):
            v = q[:, i] * np.sign(q[np.argmax(np.abs(q[:, i])), i])
            assert_close(ours.vectors[i], v, "fp32", f"{name} component {i}")
        assert_close(ours.ratios, lam[:6] / lam.sum(), "fp32")


# ---------------------------------------------------------------- svdtool init end to end
def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from tests.helpers import run_cli

    return run_cli(argv, capsys)


def _one_step(model: Any, ids: torch.Tensor) -> None:
    """One AdamW step on the trainable parameters (the LoRA factors only); they must move."""
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    before = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=1e-2)
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, params, strict=True))


@pytest.mark.parametrize("method", ["corda", "eva"])
def test_init_verify_peft_step(lora_ga_tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               method: str) -> None:  # fmt: skip
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    src, out = lora_ga_tiny["llama"], tmp_path / method
    extra = ["--corda-mode", "kpm"] if method == "corda" else ["--eva-rho", "2"]
    code, stdout, err = _cli(["init", str(src), "--method", method, "-r", "3", "--alpha", "6", "--out", str(out),
                              "--calib", str(lora_ga_tiny["qa"]), "--samples", "12", "--max-length", "24",
                              "--device", "cpu", "--report", str(tmp_path / "r.html"), *extra], capsys)  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "r.html").is_file()
    code, vout, err = _cli(["verify", str(out)], capsys)
    assert code == 0 and "verify passed" in vout, vout + err
    info = json.loads((out / "svdtool.json").read_text())
    adir = out / f"{method}_init"
    cfg = json.loads((adir / "adapter_config.json").read_text())
    assert cfg["init_lora_weights"] is True and cfg["r"] == 3 and cfg["lora_alpha"] == 6
    ids = torch.randint(0, 60, (2, 10), generator=torch.Generator().manual_seed(0))
    original = AutoModelForCausalLM.from_pretrained(str(src)).eval()
    if method == "eva":
        assert info["base"] == "original" and cfg["base_model_name_or_path"] == str(src.resolve())
        assert not list(out.glob("*.safetensors")) and not (out / "config.json").exists()
        assert "--rank-alloc eva" in stdout and info["settings"]["extra"]["eva_rho"] == 2.0
        assert info["settings"]["rank_alloc"] == "eva" and info["allocation"]["rank_alloc"] == "eva"
        ranks = {x["module"]: x["rank"] for x in info["layers"]}
        assert sum(ranks.values()) == 3 * 14  # the budget is kept (14 targets of rank 3)
        for module, k in ranks.items():
            assert cfg["rank_pattern"].get(module, 3) == k
            assert cfg["alpha_pattern"].get(module, 6) == pytest.approx(6 * k / 3)  # s = 2 on every layer
        base = AutoModelForCausalLM.from_pretrained(str(src))
    else:
        assert info["settings"]["extra"]["corda_mode"] == "kpm" and cfg["base_model_name_or_path"] == str(out.resolve())
        assert {x["extra"]["ridge"] for x in info["layers"]} and info["settings"]["extra"]["statistics_groups"] == 8
        base = AutoModelForCausalLM.from_pretrained(str(out))
    model = PeftModel.from_pretrained(base, str(adir), is_trainable=True)
    with torch.no_grad():
        assert_close(model(input_ids=ids).logits, original(input_ids=ids).logits, "fp32_logits")
    _one_step(model, ids)
    card = (out / "README.md").read_text()
    assert "is_trainable=True" in card and ("**Base:** untouched" in card) is (method == "eva")


def test_init_bad_inputs(lora_ga_tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, out = str(lora_ga_tiny["llama"]), str(tmp_path / "x")
    calib = ["--calib", str(lora_ga_tiny["text"]), "--samples", "4", "--device", "cpu"]
    for argv, needle in (
        (["--method", "corda", "--corda-mode", "kpm"], "--calib is required"),
        (["--method", "eva"], "--calib is required"),
        (["--method", "eva", "--grad-cache", "g.safetensors", *calib], "--grad-cache applies to --method lora-ga"),
        (["--method", "corda", "--corda-mode", "middle", *calib], "--corda-mode 'middle'"),
        (["--method", "eva", "--eva-rho", "0.5", *calib], "--eva-rho 0.5"),
        (["--method", "pissa", "--corda-mode", "ipm"], "--corda-mode applies to --method corda only"),
        (["--method", "corda", "--eva-rho", "2", *calib], "--eva-rho applies to --method eva only"),
    ):
        code, _, err = _cli(["init", src, "-r", "2", "--out", out, *argv], capsys)
        lines = [x for x in err.splitlines() if x.startswith("error:")]
        assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "x").exists()


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("method", ["corda", "eva"])
def test_smollm2_init_and_verify(smollm2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 method: str) -> None:  # fmt: skip
    """On SmolLM2-135M (real weights, natural text, chat template: EVA leaves the prompts out), the folder verifies.

    Sized to stay under a minute on two CPU cores: 4 samples, q_proj only (the tiny models cover the rest)."""
    from tests.lora_ga_support import smollm2_calibration

    calib = smollm2_calibration(tmp_path / "docs.jsonl")
    out = tmp_path / method
    code, stdout, err = _cli(["init", str(smollm2_dir), "--method", method, "-r", "4", "--out", str(out),
                              "--calib", str(calib), "--samples", "4", "--max-length", "64",
                              "--targets", "q_proj", "--device", "cpu"], capsys)  # fmt: skip
    assert code == 0, err
    code, stdout, err = _cli(["verify", str(out)], capsys)
    assert code == 0 and "verify passed" in stdout, stdout + err


def test_ipm_takes_the_subspace_solver_and_equals_a_full_svd() -> None:
    """Above the CPU's direct-SVD size IPM runs Chebyshev subspace iteration, not a k³ eigh; the top-r
    triplets (as s·B·A) equal numpy's float64 SVD."""
    from svdtool.linalg import factorize
    from svdtool.methods.corda import CERTIFY_TOL, wc_triplets
    from tests.helpers import matrix_with_spectrum

    shape, r = (420, 300), 5
    sigma = np.geomspace(50, 0.01, 300)
    wc = torch.from_numpy(matrix_with_spectrum(shape, sigma, seed=3))
    t = wc_triplets(wc, r, "ipm")
    assert t.algorithm == "gram-cheb" and t.residual <= CERTIFY_TOL
    u, s, vh = np.linalg.svd(wc.numpy(), full_matrices=False)
    ref = factorize.Triplets(*(torch.from_numpy(x) for x in (u[:, :r], s[:r], vh[:r])), "numpy", 0.0)
    assert_close(factorize.product_distance(t, ref), 0.0, "factor_rel")
