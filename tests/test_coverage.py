"""``svdtool coverage``: the math against float64, the similarity definitions, the summaries, and the CLI
(tiny model, and SmolLM2's real gradients)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from svdtool import coverage
from svdtool.cli import app
from svdtool.commands.coverage_matrices import gradient_coverage
from svdtool.errors import SvdtoolError
from svdtool.linalg import exact
from svdtool.results import load_json
from svdtool.results.coverage import CoverageResult, MatrixCoverage, Similarity
from tests.helpers import assert_close, matrix_with_spectrum
from tests.lora_ga_support import cli_args

runner = CliRunner()


CPU = torch.device("cpu")
SHAPES = {"tall": (40, 24), "wide": (24, 40), "square": (32, 32)}


def _previous(g: torch.Tensor, ranks: list[int]) -> tuple[np.ndarray, dict[str, float]]:
    """What coverage computed before it went through the engine: sqrt(eigvalsh) of the float64 Gram matrix."""
    lam = torch.linalg.eigvalsh(exact.gram64(g, CPU))
    sigma = lam.clamp_min(0).sqrt().flip(0).numpy()
    frob_sq = coverage.frobenius_sq(g, CPU)
    return sigma, coverage.coverage_from_sigma(sigma, frob_sq, coverage.coverage_levels(ranks))


def _gradients(dtype: torch.dtype, seed: int, tail: list[float]) -> dict[str, torch.Tensor]:
    """A tall, a wide and a square G with σ from 5 down to 5e-2, the last values replaced by ``tail``."""
    out = {}
    for i, (kind, shape) in enumerate(SHAPES.items()):
        sigma = np.geomspace(5.0, 5e-2, min(shape))
        sigma[len(sigma) - len(tail) :] = tail
        g = matrix_with_spectrum(shape, sigma, seed + 10 * i)
        out[f"model.layers.{i}.self_attn.{kind}.weight"] = torch.from_numpy(g).to(dtype)
    return out


@pytest.mark.parametrize("tail", [[], [3e-7, 1e-8, 0.0]], ids=["gram", "refined"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1])
def test_coverage_through_the_engine_equals_float64(dtype: torch.dtype, seed: int, tail: list[float]) -> None:
    """Tall, wide and square gradients through the engine's pool from memory: σ and coverage equal the
    previous float64 Gram results, and a float64 SVD: every σ² to eps64·σ₁² (what energies and coverage use),
    and σ ≥ 1e-3·σ₁ to 1e-9 relative. Small values are the Gram's, not refined, and ``methods`` says so."""
    grads = _gradients(dtype, seed, tail)
    ranks = [2, 5]
    shapes = {n: (int(g.shape[0]), int(g.shape[1])) for n, g in grads.items()}
    got = gradient_coverage(grads, shapes, ranks=ranks, device=CPU)
    assert [m.name for m in got.matrices] == list(grads) and list(got.sigmas) == list(grads)
    want_methods = {"gram64": 3} if not tail else {"gram64+unrefined": 3}
    assert got.methods == want_methods
    for m in got.matrices:
        g = grads[m.name]
        sigma = got.sigmas[m.name]
        ref = np.linalg.svd(g.double().numpy(), compute_uv=False)  # float64 reference of G as stored
        frob2 = float((g.double().numpy() ** 2).sum())
        old_sigma, old_cov = _previous(g, ranks)
        big = ref >= 1e-3 * ref[0]  # the previous Gram values are accurate to ~eps·(σ₁/σᵢ)² here
        assert_close(sigma[big], old_sigma[big], "sigma", m.name)
        assert_close(sigma[big], ref[big], "sigma", m.name)
        # Every σ², in units of σ₁²: the Gram eigenvalues' backward accuracy (coverage sums σ²).
        assert_close((sigma / ref[0]) ** 2, (ref / ref[0]) ** 2, "eig64_backward", m.name)
        for k in ("2", "4", "5", "10"):
            assert_close(m.coverage[k], old_cov[k], "metric", f"{m.name} k={k}")
            assert_close(m.coverage[k], (ref[: int(k)] ** 2).sum() / frob2, "metric", f"{m.name} k={k}")
        assert_close(m.frobenius, np.sqrt(frob2), "metric")
        assert_close(np.array(m.top_singular_values), sigma[: coverage.TOP_IN_JSON], "exact64")
        assert sorted(m.coverage, key=int) == ["2", "4", "5", "10"] and m.shape == list(g.shape)


def test_coverage_edge_cases() -> None:
    assert coverage.coverage_from_sigma(np.array([3.0, 4.0]), 25.0, [1, 2, 8]) == {"1": 9 / 25, "2": 1.0, "8": 1.0}
    assert coverage.coverage_from_sigma(np.zeros(3), 0.0, [1]) == {"1": 0.0}
    assert coverage.coverage_levels([8, 32, 16]) == [8, 16, 32, 64]


def test_similarity_definitions_by_hand() -> None:
    ref = torch.tensor([[1.0, -2.0, 0.0], [4.0, 0.5, -1.0]])
    small = torch.tensor([[0.5, 2.0, 0.0], [0.3, -0.01, -20.0]])
    sim = coverage.similarity(small, ref, 8)
    # signs equal: (0,0) +/+, (0,2) 0/0, (1,0) +/+, (1,2) -/-  -> 4 of 6
    assert sim.sign == 4 / 6
    # magnitude ratio in [0.1, 10]: 0.5 yes, 1 yes, 0/0 yes, 0.075 no, 0.02 no, 20 no -> 3 of 6
    assert sim.magnitude == 3 / 6 and sim.batch_size == 8


def test_summaries_mean_and_min() -> None:
    def mc(name: str, mtype: str, layer: int, c: float) -> MatrixCoverage:
        return MatrixCoverage(
            name, mtype, layer, [4, 4], 1.0 + layer, [1.0], {"2": c, "4": c + 0.1}, [Similarity(8, c, 1 - c)]
        )

    ms = [mc("a", "q_proj", 0, 0.5), mc("b", "q_proj", 1, 0.7), mc("c", "v_proj", 1, 0.9)]
    by_type = coverage.summarize(ms, "module_type", [2])
    assert [g.key for g in by_type] == ["all", "q_proj", "v_proj"]
    allg, q = by_type[0], by_type[1]
    assert_close(allg.coverage_mean["2"], (0.5 + 0.7 + 0.9) / 3, "metric")
    assert allg.coverage_min["2"] == 0.5 and q.coverage_min["4"] == 0.6 and q.matrices == 2
    assert_close(q.sign_similarity_mean["8"], 0.6, "metric")
    assert_close(q.frobenius_mean, 1.5, "metric")
    assert [g.key for g in coverage.summarize(ms, "layer", [2])] == ["all", "0", "1"]


def _tiny_args(tiny: dict, *extra: str) -> list[str]:
    return [
        "coverage", str(tiny["llama"]), "--calib", str(tiny["qa"]), "--samples", "8", "--max-length", "24",
        "--ranks", "2,4", "--device", "cpu", *extra,
    ]  # fmt: skip


def test_cli_table_json_and_out(lora_ga_tiny: dict, tmp_path: Path) -> None:
    out_dir = tmp_path / "cov"
    res = runner.invoke(
        app, _tiny_args(lora_ga_tiny, "--out", str(out_dir), "--grad-cache", str(tmp_path / "g.safetensors"))
    )
    assert res.exit_code == 0, res.output
    assert "Gradient coverage by a rank-r / rank-2r adapter" in res.output and "q_proj" in res.output
    saved = load_json(CoverageResult, out_dir / CoverageResult.JSON)
    assert len(saved.matrices) == 14 and saved.options.levels == [2, 4, 8]
    assert saved.by_module_type[0].key == "all" and saved.manifest.tool == "coverage"
    assert saved.gradient.mode == "exact" and saved.calibration.samples == 8
    from safetensors.numpy import load_file

    sig = load_file(str(out_dir / CoverageResult.SIDECAR))
    m0 = saved.matrices[0]
    assert_close(sig[m0.name][: len(m0.top_singular_values)], np.array(m0.top_singular_values), "exact64")
    # Every σ and coverage level against float64 from the gradients themselves (kept by --grad-cache); the
    # methods say how the σ were found (few calibration tokens: low-rank G, whose small σ stay unrefined).
    grads = load_file(str(tmp_path / "g.safetensors"))
    assert sum(saved.manifest.methods.values()) == 14 and set(saved.manifest.methods) <= {
        "gram64", "gram64+unrefined"
    }  # fmt: skip
    for m in saved.matrices:
        ref = np.linalg.svd(grads[m.name].astype(np.float64), compute_uv=False)
        assert_close((sig[m.name] / ref[0]) ** 2, (ref / ref[0]) ** 2, "eig64_backward", m.name)
        frob2 = float((grads[m.name].astype(np.float64) ** 2).sum())
        for k, value in m.coverage.items():
            assert_close(value, min((ref[: int(k)] ** 2).sum() / frob2, 1.0), "metric", f"{m.name} k={k}")
    res = runner.invoke(app, _tiny_args(lora_ga_tiny, "--format", "json"))
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert data["options"]["ranks"] == [2, 4] and "coverage_mean" in data["by_layer"][1]


def test_cli_batch_size_similarity(lora_ga_tiny: dict) -> None:
    args = _tiny_args(lora_ga_tiny, "--batch-sizes", "2,4", "--ref-batch", "8", "--format", "json")
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    sims = data["matrices"][0]["similarity"]
    assert [s["batch_size"] for s in sims] == [2, 4]
    assert all(0 <= s["sign"] <= 1 and 0 <= s["magnitude"] <= 1 for s in sims)
    assert "svdtool's definition" in data["options"]["definitions"]["sign_similarity"]
    bad = runner.invoke(app, _tiny_args(lora_ga_tiny, "--batch-sizes", "3", "--ref-batch", "8"))
    assert isinstance(bad.exception, SvdtoolError) and "multiple of --batch-size 2" in str(bad.exception)


def test_cli_bad_input_is_one_line(lora_ga_tiny: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from svdtool.cli import main

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for argv, expect in (
        (["coverage", str(lora_ga_tiny["llama"]), "--calib", str(empty), "--max-length", "32"], "is empty"),
        (["coverage", str(lora_ga_tiny["bert"]), "--calib", str(lora_ga_tiny["qa"])], "BertModel"),
        (["coverage", str(lora_ga_tiny["llama"]), "--calib", str(lora_ga_tiny["qa"])], "maximum sequence length 64"),
        (["coverage", str(lora_ga_tiny["llama"])], "--calib is required"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, expect
        lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
        assert len(lines) == 1 and expect in lines[0], lines


@pytest.mark.real
@pytest.mark.slow
def test_smollm2_coverage_table(smollm2_lora_ga: dict, tmp_path: Path) -> None:
    """Done-when: the paper-style table on SmolLM2-135M (reusing the session's --grad-cache)."""
    args = ["coverage", *cli_args(smollm2_lora_ga["model"], smollm2_lora_ga["calib"], smollm2_lora_ga["cache"])]
    res = runner.invoke(app, [*args, "--ranks", "4,8", "--out", str(tmp_path / "cov")])
    assert res.exit_code == 0, res.output
    assert "from --grad-cache" in res.output
    for token in ("down_proj", "q_proj", "v_proj", "r=8", "2r=16"):
        assert token in res.output
    saved = load_json(CoverageResult, tmp_path / "cov" / CoverageResult.JSON)
    assert len(saved.matrices) == 90 and saved.gradient.from_cache
    allg = saved.by_module_type[0]
    assert 0 < allg.coverage_min["8"] <= allg.coverage_mean["8"] <= allg.coverage_mean["16"] <= 1


def test_cpu_computes_a_bf16_checkpoint_in_fp32_and_says_so(lora_ga_tiny: dict, tmp_path: Path) -> None:
    """No --dtype on a CPU: a bf16 checkpoint is computed in fp32 (faster there); the summary and JSON say so,
    with the layer-group choice and its reason. --dtype bf16 still computes in bf16."""
    import shutil

    from transformers import AutoModelForCausalLM

    folder = tmp_path / "llama-bf16"
    shutil.copytree(lora_ga_tiny["llama"], folder)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    AutoModelForCausalLM.from_pretrained(str(lora_ga_tiny["llama"]), dtype=torch.bfloat16).save_pretrained(folder)
    tiny = {**lora_ga_tiny, "llama": folder}
    res = runner.invoke(app, _tiny_args(tiny))
    assert res.exit_code == 0, res.output
    assert "computed in fp32: the checkpoint is bf16" in res.output and "passes: 1 layer group(s)" in res.output
    data = json.loads(runner.invoke(app, _tiny_args(tiny, "--format", "json")).stdout)
    g = data["gradient"]
    assert g["dtype"] == "fp32" and "bf16" in g["dtype_reason"]
    assert g["plan"]["groups"] == 1 and g["plan"]["reason"].startswith("CPU")
    assert set(g["phases"]) >= {"open", "calibration", "load", "passes"}
    kept = json.loads(runner.invoke(app, _tiny_args(tiny, "--format", "json", "--dtype", "bf16")).stdout)
    assert kept["gradient"]["dtype"] == "bf16" and kept["gradient"]["dtype_reason"] is None
