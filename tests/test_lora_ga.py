"""LoRA-GA init: the reference formula written out independently here, PEFT's own ``lora_ga`` for
``convention="peft"``, sketch factors, bad options, and ``svdtool init --method lora-ga`` end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from svdtool.errors import SvdtoolError
from svdtool.linalg.sketch import LowRankGradient
from svdtool.methods import InitOptions, get_method
from svdtool.methods.lora_ga import lora_ga
from tests.helpers import assert_close

SHAPES = [(48, 20), (20, 48), (32, 32)]
IDS = ["tall", "wide", "square"]


def reference_lora_ga(w: torch.Tensor, g: torch.Tensor, r: int, alpha: float, rslora: bool, direction: str,
                      gamma: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """The authors' ``lora_ga_init`` (Outsider565/LoRA-GA, peft/src/peft/tuners/lora/layer.py), line for line,
    with the seed set before ``svd_lowrank`` and ``random.sample`` as the only changes."""
    torch.manual_seed(seed)
    U, S, V = torch.svd_lowrank(g.float(), q=min(4 * r, min(g.shape)), niter=4)  # noqa: N806
    V = V.T  # noqa: N806
    if direction == "ArBr":
        B = U[:, 0 : 2 * r : 2]  # noqa: N806
        A = V[1 : 2 * r : 2, :]  # noqa: N806
    elif direction == "A2rBr":
        B = U[:, :r]  # noqa: N806
        A = V[r : 2 * r, :]  # noqa: N806
    elif direction == "ArB2r":
        B = U[:, r : 2 * r]  # noqa: N806
        A = V[:r, :]  # noqa: N806
    else:
        random_list = random.Random(seed).sample(range(2 * r), 2 * r)
        B = U[:, random_list[r : 2 * r]]  # noqa: N806
        A = V[random_list[0:r], :]  # noqa: N806
    m, n = g.shape  # m: feature_out, n: feature_in
    B = B * m**0.25 / gamma**0.5  # noqa: N806
    A = A * m**0.25 / gamma**0.5  # noqa: N806
    scaling = alpha / (r**0.5 if rslora else r)
    offset = (B.double() @ A.double()) * scaling
    return A, B, w.double() - offset


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("direction", ["ArB2r", "A2rBr", "ArBr", "random"])
@pytest.mark.parametrize(("rslora", "seed"), [(False, 0), (True, 3)])
def test_reference_convention_matches_the_authors_code(shape: tuple[int, int], direction: str, rslora: bool,
                                                       seed: int) -> None:  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen, dtype=torch.float64)
    g = torch.randn(shape, generator=gen)
    r, alpha = 4, 8.0
    opts = InitOptions(rank=r, alpha=alpha, use_rslora=rslora, extra={"direction": direction, "seed": seed})
    out = get_method("lora-ga").fn(w, opts, gradient=g)
    a, b, w_res = reference_lora_ga(w, g, r, alpha, rslora, direction, 16.0, seed)
    assert_close(out.lora_A, a, "exact64")
    assert_close(out.lora_B, b, "exact64")
    assert_close(out.residual, w_res, "exact64")
    # the forward is unchanged: W_res + s·B·A = W, from the factors as returned
    assert_close(out.residual + opts.scaling * out.lora_B.double() @ out.lora_A.double(), w, "exact64")
    assert out.meta["algorithm"] == "randomized" and out.meta["q"] == min(4 * r, *shape)


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_exact_svd_follows_the_formula_against_numpy(shape: tuple[int, int]) -> None:
    """``svd=exact``: A = c·V[:, :r]ᵀ, B = c·U[:, r:2r] of a float64 numpy SVD (up to each vector's sign)."""
    rng = np.random.default_rng(7)
    g64 = rng.standard_normal(shape) @ np.diag(np.geomspace(10, 0.1, shape[1]))
    w = torch.from_numpy(rng.standard_normal(shape))
    r, gamma = 3, 4.0
    out = lora_ga(
        w, InitOptions(rank=r, alpha=6.0, extra={"svd": "exact", "gamma": gamma}), gradient=torch.from_numpy(g64)
    )
    u, s, vt = np.linalg.svd(g64.astype(np.float32).astype(np.float64), full_matrices=False)
    c = shape[0] ** 0.25 / gamma**0.5
    a_ref, b_ref = c * vt[:r], c * u[:, r : 2 * r]
    a = out.lora_A.double().numpy()
    b = out.lora_B.double().numpy()
    sign_a = np.sign((a * a_ref).sum(axis=1))[:, None]
    sign_b = np.sign((b * b_ref).sum(axis=0))[None, :]
    np.testing.assert_allclose(a, sign_a * a_ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(b, sign_b * b_ref, rtol=0, atol=1e-5)
    assert_close(np.array(out.meta["sigma"]), s[: 2 * r], "fp32")


def _peft_layer_init(module: torch.nn.Module, target: str, grad: torch.Tensor, r: int, alpha: float,
                     direction: str, seed: int, fan_in_fan_out: bool = False) -> torch.nn.Module:  # fmt: skip
    """PEFT's own lora_ga init through get_peft_model, with the global seed set right before lora_ga_init."""
    from peft import LoraConfig, LoraGAConfig, get_peft_model
    from peft.tuners.lora.layer import LoraLayer

    getattr(module, target)._peft_loraga_grad = grad.clone()
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=[target],
        init_lora_weights="lora_ga",
        lora_ga_config=LoraGAConfig(direction=direction),
        fan_in_fan_out=fan_in_fan_out,
    )
    original = LoraLayer.lora_ga_init

    def seeded(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        torch.manual_seed(seed)
        return original(self, *args, **kwargs)

    LoraLayer.lora_ga_init = seeded  # type: ignore[method-assign]
    try:
        return getattr(get_peft_model(module, cfg).base_model.model, target)
    finally:
        LoraLayer.lora_ga_init = original  # type: ignore[method-assign]


@pytest.mark.parametrize("direction", ["ArB2r", "A2rBr", "ArBr", "random"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_peft_convention_equals_peft_linear(direction: str, dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    lin = torch.nn.Sequential()
    lin.add_module("proj", torch.nn.Linear(40, 24, bias=False).to(dtype))
    w = lin.proj.weight.detach().clone()
    g = torch.randn(24, 40)
    layer = _peft_layer_init(lin, "proj", g, 4, 8.0, direction, seed=11)
    opts = InitOptions(rank=4, alpha=8.0, extra={"convention": "peft", "direction": direction, "seed": 11})
    out = lora_ga(w.double(), opts, gradient=g, source_dtype=dtype)
    assert torch.equal(out.lora_A.float(), layer.lora_A["default"].weight.detach().float())
    assert torch.equal(out.lora_B.float(), layer.lora_B["default"].weight.detach().float())
    assert torch.equal(out.residual.to(dtype), layer.base_layer.weight.detach())


def test_peft_convention_equals_peft_gpt2_conv1d() -> None:
    """GPT-2 Conv1D (weight stored (in, out)): PEFT transposes the gradient, and reads d_out from weight.shape[0]."""
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(2)
    mod = torch.nn.Sequential()
    mod.add_module("c_fc", Conv1D(48, 16))  # nf=48 outputs, nx=16 inputs: weight (16, 48)
    w_stored = mod.c_fc.weight.detach().clone()
    g_linear = torch.randn(48, 16)  # (out, in)
    layer = _peft_layer_init(mod, "c_fc", g_linear.T, 4, 4.0, "ArB2r", seed=5, fan_in_fan_out=True)
    opts = InitOptions(rank=4, alpha=4.0, extra={"convention": "peft", "seed": 5})
    out = lora_ga(w_stored.T.double(), opts, gradient=g_linear, transposed=True, source_dtype=torch.float32)
    assert torch.equal(out.lora_A, layer.lora_A["default"].weight.detach())
    assert torch.equal(out.lora_B, layer.lora_B["default"].weight.detach())
    assert torch.equal(out.residual.float().T, layer.base_layer.weight.detach())
    assert out.meta["scale"] == 16**0.25 / 4  # PEFT's d_out here is the stored shape[0] = in_features


def test_low_rank_gradient_input_gives_the_same_init() -> None:
    """Top factors (sketch mode, or exact + reduce) give what the dense gradient gives."""
    from svdtool.methods.lora_ga import decompose

    gen = torch.Generator().manual_seed(4)
    w = torch.randn(30, 20, generator=gen, dtype=torch.float64)
    g = torch.randn(30, 20, generator=gen)
    opts = InitOptions(rank=3, alpha=3.0, extra={"seed": 9})
    dense = lora_ga(w, opts, gradient=g)
    u, s, vh, meta = decompose(g, 3, opts.extra)
    factored = lora_ga(w, opts, gradient=LowRankGradient(u, s, vh, "randomized"))
    assert torch.equal(dense.lora_A, factored.lora_A) and torch.equal(dense.lora_B, factored.lora_B)
    assert factored.meta["algorithm"] == "randomized"
    t = LowRankGradient(u, s, vh).T  # the transposed factors describe Gᵀ
    assert_close((t.U * t.S) @ t.Vh, ((u * s) @ vh).T, "fp32")


@pytest.mark.parametrize(
    ("extra", "rank", "message"),
    [
        ({"direction": "sideways"}, 2, "--direction 'sideways'"),
        ({"convention": "mine"}, 2, "--convention 'mine'"),
        ({"gamma": 0}, 2, "--gamma 0"),
        ({}, 6, "needs 2r = 12"),
        ({"svd": "fast"}, 2, "--svd 'fast'"),
    ],
)
def test_bad_options_are_one_clear_line(extra: dict, rank: int, message: str) -> None:
    w, g = torch.zeros(10, 12, dtype=torch.float64), torch.ones(10, 12)
    with pytest.raises(SvdtoolError, match=message):
        lora_ga(w, InitOptions(rank=rank, alpha=1.0, extra=extra), gradient=g)
    with pytest.raises(SvdtoolError, match="sketch holds 4"):
        lora_ga(
            w,
            InitOptions(rank=3, alpha=1.0),
            gradient=LowRankGradient(torch.zeros(10, 4), torch.ones(4), torch.zeros(4, 12)),
        )
    with pytest.raises(SvdtoolError, match="does not match"):
        lora_ga(w, InitOptions(rank=2, alpha=1.0), gradient=torch.ones(12, 10))


def test_registered() -> None:
    spec = get_method("lora-ga")
    assert spec.needs_gradient and "2407.05000" in spec.paper


# ---------------------------------------------------------------- svdtool init --method lora-ga


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from svdtool.cli import main

    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _calib_args(tiny: dict) -> list[str]:
    return ["--calib", str(tiny["qa"]), "--samples", "8", "--max-length", "32", "--device", "cpu"]


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "lora_ga_init" / "adapter_model.safetensors"))


def test_init_verify_and_peft_step_zero(lora_ga_tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Init, verify, load in PEFT: same logits as the original model, and the LoRA gradients at step 0 are
    s·BᵀG and s·GAᵀ with G the estimated full gradient, i.e. the first step follows full fine-tuning."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from svdtool.calibration import CalibRequest, prepare_calibration
    from svdtool.calibration.encode import batches, collate
    from svdtool.gradients import GradientRequest, estimate_gradients

    src, out = lora_ga_tiny["llama"], tmp_path / "ga"
    code, _, err = _cli(["init", str(src), "--method", "lora-ga", "-r", "2", "--alpha", "4", "--out", str(out),
                         *_calib_args(lora_ga_tiny)], capsys)  # fmt: skip
    assert code == 0, err
    code, stdout, err = _cli(["verify", str(out)], capsys)
    assert code == 0 and "verify passed" in stdout, stdout + err
    info = json.loads((out / "svdtool.json").read_text())
    extra = info["settings"]["extra"]
    assert extra["direction"] == "ArB2r" and extra["calib_samples"] == 8 and extra["gradient"] == "exact"
    assert info["settings"]["svd"] == "randomized" and info["settings"]["niter"] == 4

    tok = AutoTokenizer.from_pretrained(str(src))
    calib = CalibRequest(str(lora_ga_tiny["qa"]), samples=8, max_length=32)
    items = prepare_calibration(calib, tok).items
    original = AutoModelForCausalLM.from_pretrained(str(src)).eval()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(out)), str(out / "lora_ga_init"))
    model.eval()
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    count = 0
    for group in batches(items, calib.batch_size):
        batch = collate(group, tok.pad_token_id)
        with torch.no_grad():
            assert_close(model(**batch).logits, original(**batch).logits, "fp32_logits")
        model(**batch).loss.backward()
        count += 1
    grads = estimate_gradients(GradientRequest(str(src), calib, device="cpu")).grads
    s = 4 / 2
    layer = model.base_model.model.model.layers[1].mlp.down_proj
    g = grads["model.layers.1.mlp.down_proj.weight"].double()
    a, b = layer.lora_A["default"].weight.double(), layer.lora_B["default"].weight.double()
    scale = (s * g @ a.T).abs().max()
    assert_close(layer.lora_B["default"].weight.grad.double() / count / scale, s * g @ a.T / scale, "grad_fp32")
    assert_close(layer.lora_A["default"].weight.grad.double() / count / scale, s * b.T @ g / scale, "grad_fp32")


@pytest.mark.parametrize("pad", [9, 17])  # two folder-name lengths: the tensors start at two alignments
def test_grad_cache_and_on_device_reduction_agree(lora_ga_tiny: dict, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str], pad: int) -> None:  # fmt: skip
    """Without a cache each G is reduced to its top 2r on the device; with one, G is stored whole and decomposed
    at init. Same adapter, bit for bit; the second run reuses the cache. The cache's path is in the file's
    header, so the folder name's length moves where the tensors start in the file."""
    src, cache = lora_ga_tiny["llama"], tmp_path / ("cache-" + "x" * pad) / "g.safetensors"
    base = ["init", str(src), "--method", "lora-ga", "-r", "2", *_calib_args(lora_ga_tiny)]
    assert _cli([*base, "--out", str(tmp_path / "a")], capsys)[0] == 0
    assert _cli([*base, "--out", str(tmp_path / "b"), "--grad-cache", str(cache)], capsys)[0] == 0
    code, _, err = _cli([*base, "--out", str(tmp_path / "c"), "--grad-cache", str(cache)], capsys)
    assert code == 0 and "reusing gradients" in err
    a, b, c = (_adapter(tmp_path / x) for x in "abc")
    for key in a:
        assert torch.equal(a[key], b[key]) and torch.equal(b[key], c[key]), key


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_overlapped_stream_beside_captured_passes(
    lora_ga_tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two layer groups on CUDA with every step captured and replayed: the init stream writes the first group's
    residuals while the second pass captures and replays (never beside a capture); same adapter as graphs off."""
    from svdtool.gradients import graphed
    from svdtool.linalg import cuda_graphs

    base = ["init", str(lora_ga_tiny["llama"]), "--method", "lora-ga", "-r", "2", "--calib", str(lora_ga_tiny["qa"]),
            "--samples", "16", "--max-length", "32", "--device", "cuda", "--grad-groups", "2"]  # fmt: skip
    monkeypatch.setattr(graphed, "ADAPTIVE", False)  # capture every pass, whatever the timing
    code, _, err = _cli([*base, "--out", str(tmp_path / "graphs")], capsys)
    assert code == 0, err
    monkeypatch.setattr(cuda_graphs, "ENABLED", False)
    assert _cli([*base, "--out", str(tmp_path / "eager")], capsys)[0] == 0
    graphs, eager = _adapter(tmp_path / "graphs"), _adapter(tmp_path / "eager")
    for key, value in eager.items():
        assert_close(graphs[key].double(), value.double(), "grad_fp32", key)


def test_a_failing_stream_stops_the_estimate(
    lora_ga_tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The residual writer fails while the gradients are estimated: its one line, the estimate stopped at its
    next result, and no output folder."""
    from svdtool.adapters import safetensors_out
    from svdtool.errors import CheckFailed
    from svdtool.gradients import compute

    def full_disk(self: object, name: str, tensor: torch.Tensor) -> None:
        raise CheckFailed(f"cannot write {name}: No space left on device")

    passes = []
    inner = compute.run_pass
    monkeypatch.setattr(compute, "run_pass", lambda *a, **k: passes.append(1) or inner(*a, **k))
    monkeypatch.setattr(safetensors_out.ShardSet, "write", full_disk)
    out = tmp_path / "ga"
    code, stdout, err = _cli(["init", str(lora_ga_tiny["llama"]), "--method", "lora-ga", "-r", "2", "--out", str(out),
                              "--grad-groups", "2", *_calib_args(lora_ga_tiny)], capsys)  # fmt: skip
    assert code == 1 and "No space left on device" in err and "Traceback" not in err, err
    assert len(passes) == 1  # the second pass never ran
    assert not out.exists() and not list(tmp_path.glob(".ga*"))


def test_gpt2_sketch_and_peft_convention(
    lora_ga_tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = lora_ga_tiny["gpt2"]
    args = ["--calib", str(lora_ga_tiny["text"]), "--samples", "6", "--max-length", "16", "--device", "cpu"]
    for name, extra in (
        ("sketch", ["--gradient", "sketch"]),
        ("peft", ["--convention", "peft", "--direction", "A2rBr"]),
    ):
        out = tmp_path / name
        code, _, err = _cli(
            ["init", str(src), "--method", "lora-ga", "-r", "2", "--out", str(out), *args, *extra], capsys
        )
        assert code == 0, err
        code, stdout, err = _cli(["verify", str(out)], capsys)
        assert code == 0 and "verify passed" in stdout, stdout + err
    info = json.loads((tmp_path / "sketch" / "svdtool.json").read_text())
    assert {x["algorithm"] for x in info["layers"]} == {"sketch"}
    assert json.loads((tmp_path / "peft" / "svdtool.json").read_text())["settings"]["extra"]["convention"] == "peft"


def test_init_bad_inputs(lora_ga_tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "x")
    for argv, needle in (
        (["init", str(lora_ga_tiny["llama"]), "--method", "lora-ga", "-r", "2", "--out", out], "--calib is required"),
        (["init", str(lora_ga_tiny["llama"]), "--method", "pissa", "-r", "2", "--out", out, "--calib", "x.jsonl"],
         "apply to --method lora-ga"),
        (["init", str(lora_ga_tiny["bert"]), "--method", "lora-ga", "-r", "2", "--out", out,
          *_calib_args(lora_ga_tiny)], "not a causal language model"),
    ):  # fmt: skip
        code, _, err = _cli(argv, capsys)
        lines = [x for x in err.splitlines() if x.startswith("error:")]
        assert code == 2 and len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "x").exists()


@pytest.mark.real
@pytest.mark.slow
def test_smollm2_init_and_verify(smollm2_lora_ga: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Done-when: on SmolLM2-135M, ``svdtool init --method lora-ga`` writes a folder that ``svdtool verify`` passes."""
    from tests.lora_ga_support import cli_args

    out = tmp_path / "smol-ga"
    args = cli_args(smollm2_lora_ga["model"], smollm2_lora_ga["calib"], smollm2_lora_ga["cache"])
    code, stdout, err = _cli(
        ["init", *args, "--method", "lora-ga", "-r", "4", "--alpha", "8", "--out", str(out)], capsys
    )
    assert code == 0, err
    assert "reusing gradients" in err and "lora-ga r=4" in stdout
    code, stdout, err = _cli(["verify", str(out)], capsys)
    assert code == 0 and "verify passed" in stdout, stdout + err
