"""``svdtool init`` with OLoRA, MiCA, orthogonal, LoRA-One and ``--rank-alloc``: folders PEFT trains from, and
``svdtool verify`` on folders that keep the original base."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from svdtool.commands.init import InitRequest, run_init
from svdtool.results.init import InitResult
from tests.helpers import assert_close
from tests.test_init_cli import cli, model_class, outputs, toy_ids
from tests.test_methods_peft_inits import NEEDS_MICA

KEPT = ["mica", "orthogonal"]
#: mica folders load in PEFT only from 0.20 on.
KEPT_PEFT = [pytest.param("mica", marks=NEEDS_MICA), "orthogonal"]


@pytest.fixture(scope="session")
def new_inits(
    tiny_checkpoints: dict[tuple[str, bool], Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], tuple[Path, Path, InitResult]]:
    """(kind, method) -> (source, folder, result) for olora/mica/orthogonal at r = 4, α = 8 (s = 2)."""
    root = tmp_path_factory.mktemp("new_inits")
    out = {}
    for kind in ("llama", "gpt2"):
        src = tiny_checkpoints[(kind, True)]
        for method in ("olora", *KEPT):
            folder = root / f"{kind}-{method}"
            res = run_init(InitRequest(model=str(src), method=method, rank=4, alpha=8, out=folder, device="cpu"))
            out[(kind, method)] = (src, folder, res)
    return out


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("method", KEPT)
def test_kept_base_writes_only_the_adapter(new_inits: dict, kind: str, method: str) -> None:
    src, folder, res = new_inits[(kind, method)]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", f"{method}_init", "svdtool.json"]
    cfg = json.loads((folder / f"{method}_init" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(src.resolve()) and cfg["revision"] is None
    assert cfg["init_lora_weights"] == ("mica" if method == "mica" else True)
    assert cfg["fan_in_fan_out"] is (kind == "gpt2")
    assert res.base == "original" and res.residual_files == [] and res.copied_files == []
    assert all(x.reconstruction_error < 1e-7 for x in res.layers)  # ‖s·B·A‖/‖W‖: 0 (MiCA) or fp32 rounding
    card = (folder / "README.md").read_text()
    assert str(src.resolve()) in card and "no residual" in card.lower()
    assert ("PEFT ≥ 0.20" in card and "low_cpu_mem_usage=True" in card) is (method == "mica")


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["olora", *KEPT_PEFT])
def test_peft_loads_trains_and_starts_from_the_original(new_inits: dict, kind: str, method: str) -> None:
    from peft import PeftModel

    src, folder, res = new_inits[(kind, method)]
    cls = model_class(kind)
    ids = toy_ids()
    with torch.no_grad():
        ref = outputs(cls.from_pretrained(str(src)).eval(), kind, ids)
    base = cls.from_pretrained(str(src) if res.base == "original" else str(folder))
    model = PeftModel.from_pretrained(base, str(folder / res.adapter_dir), is_trainable=True, low_cpu_mem_usage=True)
    with torch.no_grad():
        assert_close(outputs(model.eval(), kind, ids), ref, "fp32_logits", "step-0 outputs")
    named = dict(model.named_parameters())
    a_names = [n for n in named if "lora_A" in n]
    b_names = [n for n in named if "lora_B" in n]
    assert a_names and b_names and all(named[n].requires_grad for n in a_names)
    assert all(named[n].requires_grad is (method != "mica") for n in b_names)  # MiCA's variant freezes B
    before = {n: p.detach().clone() for n, p in named.items() if "lora_" in n}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    changed = {n for n in before if not torch.equal(named[n], before[n])}
    assert set(a_names) <= changed
    assert (set(b_names) <= changed) is (method != "mica") and (not (set(b_names) & changed)) is (method == "mica")


@pytest.mark.parametrize("method", ["olora", *KEPT_PEFT])
def test_verify_passes(new_inits: dict, method: str, capsys: Any) -> None:
    for kind in ("llama", "gpt2"):
        _, folder, _ = new_inits[(kind, method)]
        code, stdout, err = cli(["verify", str(folder), "--device", "cpu", "--format", "json"], capsys)
        data = json.loads(stdout)
        assert code == 0 and data["passed"], err
        assert data["logits"]["rel_error"] < 1e-5 and len(data["layers"]) == (14 if kind == "llama" else 8)
        assert (data["untouched_checked"] == 0) is (method in KEPT)  # no residual: nothing to compare bit for bit


def test_verify_catches_a_damaged_kept_adapter(new_inits: dict, tmp_path: Path, capsys: Any) -> None:
    """A non-zero product where the init promises B·A = 0 fails verify (exit 1)."""
    import shutil

    from safetensors.torch import load_file, save_file

    _, folder, _ = new_inits[("llama", "orthogonal")]
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    path = bad / "orthogonal_init" / "adapter_model.safetensors"
    tensors = load_file(str(path))
    key = next(k for k in tensors if "lora_B" in k)
    tensors[key] = tensors[key] + 0.01
    save_file(tensors, str(path), metadata={"format": "pt"})
    code, _, err = cli(["verify", str(bad), "--device", "cpu"], capsys)
    assert code == 1 and "past tolerance" in err


def test_energy_allocation_patterns_load_in_peft(tiny_checkpoints: dict, tmp_path: Path, capsys: Any) -> None:
    src, out = tiny_checkpoints[("llama", False)], tmp_path / "alloc"
    argv = ["init", str(src), "--method", "pissa", "-r", "4", "--alpha", "8", "--rank-alloc", "energy"]
    report = tmp_path / "alloc.html"
    code, stdout, err = cli([*argv, "--out", str(out), "--device", "cpu", "--format", "json", "--report", str(report)],
                            capsys)  # fmt: skip
    assert code == 0, err
    assert "Allocated rank per layer (energy)" in report.read_text()
    data = json.loads(stdout)
    s = data["settings"]
    ranks = {x["module"]: x["rank"] for x in data["layers"]}
    assert s["rank_alloc"] == "energy" and s["rank_pattern"] == ranks and len(set(ranks.values())) > 1
    assert all(s["alpha_pattern"][m] == pytest.approx(2.0 * r) for m, r in ranks.items())  # s = 2 everywhere
    costs = {x["module"]: sum(x["shape"]) for x in data["layers"]}
    budget = 4 * sum(costs.values())
    assert sum(r * costs[m] for m, r in ranks.items()) <= budget == data["allocation"]["rank_budget"]
    assert data["allocation"]["rank_gain"] >= data["allocation"]["rank_gain_uniform"]
    cfg = json.loads((out / "pissa_init" / "adapter_config.json").read_text())
    assert cfg["rank_pattern"] == ranks and cfg["r"] == 4
    code, stdout, err = cli(["verify", str(out), "--device", "cpu"], capsys)
    assert code == 0 and "verify passed" in stdout, stdout + err
    code, stdout, _ = cli(["init", str(src), "--method", "pissa", "-r", "4", "--rank-alloc", "energy", "--out",
                           str(tmp_path / "t"), "--device", "cpu"], capsys)  # fmt: skip
    assert code == 0 and "ranks" in stdout and "--rank-alloc energy" in stdout


def _calib(tiny: dict) -> list[str]:
    return ["--calib", str(tiny["qa"]), "--samples", "8", "--max-length", "32", "--device", "cpu"]


def test_lora_one_folder_trains_and_verifies(lora_ga_tiny: dict, tmp_path: Path, capsys: Any) -> None:
    """LoRA-One on the original base: s·B·A is the best rank-r step along −G, which PEFT applies as saved."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from svdtool.calibration import CalibRequest
    from svdtool.gradients import GradientRequest, estimate_gradients

    src, out = lora_ga_tiny["llama"], tmp_path / "one"
    code, _, err = cli(["init", str(src), "--method", "lora-one", "-r", "2", "--alpha", "4", "--out", str(out),
                        *_calib(lora_ga_tiny)], capsys)  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "lora_one_init", "svdtool.json"]
    code, stdout, err = cli(["verify", str(out), "--device", "cpu"], capsys)
    assert code == 0 and "verify passed" in stdout, stdout + err
    info = json.loads((out / "svdtool.json").read_text())
    assert info["base"] == "original" and info["changes_output"] and info["settings"]["extra"]["gamma"] == 128
    grads = estimate_gradients(GradientRequest(str(src), CalibRequest(str(lora_ga_tiny["qa"]), samples=8,
                                                                       max_length=32), device="cpu")).grads  # fmt: skip
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(src)), str(out / "lora_one_init"),
                                      is_trainable=True)  # fmt: skip
    layer = model.base_model.model.model.layers[1].mlp.down_proj
    a, b = layer.lora_A["default"].weight.detach().double(), layer.lora_B["default"].weight.detach().double()
    g = -grads["model.layers.1.mlp.down_proj.weight"].double()
    u, sig, vh = torch.linalg.svd(g, full_matrices=False)
    step = (u[:, :2] * sig[:2]) @ vh[:2] / (sig[0] * 128)
    assert_close(float(((2 * b @ a) - 2 * step).norm() / (2 * step).norm()), 0.0, "factor_rel", "s·B·A")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = toy_ids()
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert not torch.equal(layer.lora_A["default"].weight.detach().double(), a)


def test_lora_one_coverage_allocation(lora_ga_tiny: dict, tmp_path: Path, capsys: Any) -> None:
    src, out = lora_ga_tiny["llama"], tmp_path / "onecov"
    code, stdout, err = cli(["init", str(src), "--method", "lora-one", "-r", "2", "--rank-alloc", "coverage",
                             "--out", str(out), "--format", "json", *_calib(lora_ga_tiny)], capsys)  # fmt: skip
    assert code == 0, err
    data = json.loads(stdout)
    ranks = [x["rank"] for x in data["layers"]]
    assert data["allocation"]["rank_alloc"] == "coverage" and len(set(ranks)) > 1
    assert data["allocation"]["rank_params"] <= data["allocation"]["rank_budget"]
    code, stdout, err = cli(["verify", str(out), "--device", "cpu"], capsys)
    assert code == 0 and "verify passed" in stdout, stdout + err


BAD = {
    "odd rank orthogonal": (["--method", "orthogonal", "-r", "3"], "even rank"),
    "energy for olora": (["--method", "olora", "--rank-alloc", "energy"], "--rank-alloc energy applies to"),
    "coverage for pissa": (["--rank-alloc", "coverage"], "pissa allocates by energy"),
    "unknown allocation": (["--rank-alloc", "eigen"], "expected one of"),
    "calib for mica": (["--method", "mica", "--calib", "x.jsonl"], "--calib and --grad-cache apply to"),
    "lora-one without calib": (["--method", "lora-one"], "--calib"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs(case: str, tiny_checkpoints: dict, tmp_path: Path, capsys: Any) -> None:
    extra, message = BAD[case]
    argv = ["init", str(tiny_checkpoints[("llama", False)]), "--method", "pissa", "-r", "4"]
    code, _, stderr = cli([*argv, "--out", str(tmp_path / "o"), *extra], capsys)
    lines = [x for x in stderr.strip().splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], stderr
    assert list(tmp_path.iterdir()) == []


def test_reports_render(new_inits: dict, tmp_path: Path, capsys: Any) -> None:
    """Methods without singular values (OLoRA, orthogonal) and with a kept base render their report section."""
    for method, needle in (("olora", "W_res + s·B·A reproduces W"), ("orthogonal", "training starts from the original"),
                           ("mica", "training starts from the original")):  # fmt: skip
        _, folder, _ = new_inits[("llama", method)]
        html = tmp_path / f"{method}.html"
        code, _, err = cli(["report", str(folder), "-o", str(html)], capsys)
        assert code == 0, err
        assert needle in html.read_text()


def test_bf16_olora_reproduces_the_original_to_the_bf16_floor(tmp_path: Path, capsys: Any) -> None:
    from tests.conftest import build_tiny_model, save_tiny

    src = save_tiny(build_tiny_model("llama", seed=4), tmp_path / "bf16", sharded=False, dtype=torch.bfloat16)
    res = run_init(InitRequest(model=str(src), method="olora", rank=4, alpha=16, out=tmp_path / "o", device="cpu"))
    assert res.residual_dtype == "bf16" and res.max_reconstruction_error <= res.reconstruction_tol
    code, stdout, err = cli(["verify", str(tmp_path / "o"), "--device", "cpu"], capsys)
    assert code == 0 and "verify passed" in stdout, stdout + err
