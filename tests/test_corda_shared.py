"""CorDA's per-input work (PEFT's ridge, C_d, the LU of C_d) is computed once per distinct input and shared by the
targets that read it (q/k/v, gate/up), and not one output number changes: against the per-target math as it
ran before the sharing, written out here (``_unshared``), bit for bit."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch

import svdtool.methods.corda as corda
from svdtool.linalg import factorize
from svdtool.methods import InitOptions
from svdtool.methods.corda import CordaInput, prepare, ridge, wc_triplets
from svdtool.methods.pissa import sqrt_split

CPU = torch.device("cpu")


def _unshared(w: torch.Tensor, cov: torch.Tensor, opts: InitOptions) -> Any:
    """The per-target CorDA of before the sharing: ridge, C_d, W·C_d triplets and ``torch.linalg.solve``."""
    d = ridge(cov)
    n = w.shape[1]
    c_d = cov + torch.eye(n, dtype=torch.float64, device=cov.device) * (torch.diagonal(cov).mean() * d)
    t = wc_triplets(w @ c_d, opts.rank, opts.extra["corda_mode"])
    v_r = torch.linalg.solve(c_d, t.vh.T)
    return sqrt_split(w, factorize.Triplets(t.u, t.s, v_r.T.contiguous(), t.algorithm, t.residual), opts)


def _covariance(n: int, tokens: int, seed: int) -> torch.Tensor:
    """Σ XᵀX/T of Gaussian tokens (tokens < n: low rank, PEFT's ridge doubles), made slightly non-symmetric so
    that the LU of C_d and of C_dᵀ differ (the factorisation must be the one torch.linalg.solve uses)."""
    x = torch.randn(tokens, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    c = x.T @ x / tokens
    c[0, 1] += 1e-9 * float(c[0, 0])
    return c


def _equal(got: Any, ref: Any) -> None:
    for a, b in ((got.lora_A, ref.lora_A), (got.lora_B, ref.lora_B), (got.residual, ref.residual)):
        assert torch.equal(a, b)


CASES = [((48, 20), 200), ((20, 48), 200), ((32, 32), 200), ((20, 48), 12), ((6, 1536), 1)]


@pytest.mark.parametrize(("shape", "tokens"), CASES, ids=["tall", "wide", "square", "low-rank-C", "ridge-doubles"])
@pytest.mark.parametrize("mode", ["ipm", "kpm"])
def test_prepared_input_gives_the_same_bits(shape: tuple[int, int], tokens: int, mode: str) -> None:
    """C prepared inside the call, C prepared once and shared by three weights, and the per-target math of
    before: equal to the bit (A, B and W_res), for tall, wide and square weights, and where PEFT's ridge doubles."""
    out_f, in_f = shape
    cov = _covariance(in_f, tokens, seed=in_f)
    opts = InitOptions(rank=min(4, out_f), alpha=8.0, extra={"corda_mode": mode})
    shared = prepare(cov, CPU)
    assert shared.ridge == ridge(cov) and (shared.ridge > 0.01) is (in_f == 1536)
    for seed in range(1 if in_f > 1000 else 3):  # q/k/v: three weights on one input
        w = torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        ref = _unshared(w, cov, opts)
        _equal(corda.corda(w, opts, statistics=cov), ref)
        _equal(corda.corda(w, opts, statistics=shared), ref)


def test_solve_uses_the_factors_linalg_solve_uses() -> None:
    """CordaInput.solve equals torch.linalg.solve(C_d, ·) bit for bit, for several widths and right-hand sides."""
    for n, k in ((5, 2), (64, 4), (300, 16)):
        inp = prepare(_covariance(n, 3 * n, seed=n), CPU)
        rhs = torch.randn(k, n, generator=torch.Generator().manual_seed(k), dtype=torch.float64).T
        assert torch.equal(inp.solve(rhs), torch.linalg.solve(inp.c_d, rhs))


def _target(name: str, width: int) -> Any:
    from svdtool.commands.init_layers import Target
    from svdtool.loading import TensorInfo

    return Target(TensorInfo(name, (width, width), "fp32", "model.safetensors", 4 * width * width), name, False,
                  width, width, 2)  # fmt: skip


def test_shared_inputs_prepare_once_and_release() -> None:
    """Five targets on two inputs: two preparations; an input's prepared part leaves the cache with its last
    target and is freed once that target is done with it. A callable source shares nothing."""
    from svdtool.commands.init_statistics import SharedInputs

    qkv, gate_up = _covariance(8, 40, seed=1), _covariance(8, 40, seed=2)
    source = {"q": qkv, "k": qkv, "v": qkv, "gate": gate_up, "up": gate_up}
    targets = [_target(n, 8) for n in ("q", "gate", "k", "up", "v")]  # interleaved: both inputs live at once
    shared = SharedInputs(source, targets, prepare, CPU)
    got = {t.info.name: shared(t) for t in targets[:2]}
    assert shared.prepared == 2 and len(shared.ready) == 2
    got["k"], got["up"] = shared(targets[2]), shared(targets[3])
    assert got["k"] is got["q"] and got["up"] is got["gate"] and len(shared.ready) == 1  # gate/up: done
    assert torch.equal(got["q"].c_d, prepare(qkv, CPU).c_d)
    last = weakref.ref(got["q"])
    got["v"] = shared(targets[4])
    assert got["v"] is got["q"] and shared.prepared == 2 and not shared.ready
    got.clear()
    gc.collect()
    assert last() is None  # nothing in svdtool keeps C_d and its LU after the last target

    by_call = SharedInputs(source.__getitem__, targets, prepare, CPU)
    assert [isinstance(by_call(t), CordaInput) for t in targets] == [True] * 5 and by_call.prepared == 5
    passthrough = SharedInputs(source, targets, None, CPU)  # EVA: no per-input part, values as they are
    assert passthrough(targets[0]) is qkv and passthrough.prepared == 0


@pytest.mark.parametrize("mode", ["ipm", "kpm"])
def test_init_shares_each_input_and_writes_the_same_bits(lora_ga_tiny: dict, tmp_path: Path, mode: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """``run_init`` on the tiny Llama (14 targets, 8 distinct inputs): PEFT's ridge runs once per input, and the
    written adapter and residual equal the per-target math of before, bit for bit."""
    from safetensors.torch import load_file

    from svdtool.adapters.peft_format import lora_key
    from svdtool.calibration import CalibRequest
    from svdtool.commands.init import InitRequest, run_init
    from svdtool.statistics import ActivationRequest, collect_statistics

    src = lora_ga_tiny["llama"]
    calib = CalibRequest(str(lora_ga_tiny["text"]), samples=12, max_length=24)
    stats = collect_statistics(ActivationRequest(str(src), calib, statistic="corda", device="cpu"),
                               lambda names, c, n: c)  # fmt: skip
    calls: list[int] = []

    def counted(cov: torch.Tensor) -> float:
        calls.append(cov.shape[0])
        return ridge(cov)

    monkeypatch.setattr(corda, "ridge", counted)
    out = tmp_path / "out"
    opts = InitOptions(rank=3, alpha=6.0, extra={"corda_mode": mode})
    res = run_init(InitRequest(str(src), "corda", 3, out, alpha=6.0, device="cpu", extra={"corda_mode": mode},
                               statistics=stats.values))  # fmt: skip
    monkeypatch.undo()
    assert len(res.layers) == 14 and len(calls) == len(stats.groups) == 8
    assert 0 < res.manifest.timings["inputs"] <= res.manifest.timings["math"]
    adapter = load_file(str(out / "corda_init" / "adapter_model.safetensors"))
    residual = load_file(str(out / "model-00001-of-00001.safetensors"))
    original = load_file(str(src / "model.safetensors"))
    for layer in res.layers:
        w = original[layer.name]
        ref = _unshared(w.double(), stats.values[layer.name], opts)
        assert torch.equal(adapter[lora_key(layer.module, "A")], ref.lora_A)
        assert torch.equal(adapter[lora_key(layer.module, "B")], ref.lora_B)
        assert torch.equal(residual[layer.name], ref.residual.to(w.dtype))


# ---------------------------------------------------------------- CUDA (skipped on CI)
def _tf32_engaged() -> bool:
    """Whether a float32 product on CUDA runs in TF32 now: its inputs are then rounded to 10 mantissa bits, an
    error of about 1e-3 against float64, where a float32 GEMM is within about 1e-6."""
    g = torch.Generator(device="cuda").manual_seed(0)
    a, b = (torch.randn(1024, 1024, generator=g, device="cuda") for _ in range(2))
    ref = a.double() @ b.double()
    return float(((a @ b).double() - ref).norm() / ref.norm()) > 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_corda_statistics_of_a_bf16_model_run_in_tf32(lora_ga_tiny: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the real hooks of ``collect_statistics`` on a bf16 model on CUDA: every per-sample XᵀX is taken with
    bf16 inputs while cuBLAS runs float32 products in TF32, and TF32 is off again afterwards."""
    from collections.abc import Iterator
    from contextlib import contextmanager

    import svdtool.statistics.accumulate as accumulate
    from svdtool.calibration import CalibRequest
    from svdtool.statistics import ActivationRequest, collect_statistics

    real = accumulate.exact_tf32
    seen: list[tuple[torch.dtype, bool]] = []

    @contextmanager
    def spy(x: torch.Tensor) -> Iterator[None]:
        with real(x):
            seen.append((x.dtype, _tf32_engaged()))
            yield

    monkeypatch.setattr(accumulate, "exact_tf32", spy)
    calib = CalibRequest(str(lora_ga_tiny["text"]), samples=4, max_length=24)
    req = ActivationRequest(str(lora_ga_tiny["llama"]), calib, statistic="corda", device="cuda", dtype="bf16")
    stats = collect_statistics(req, lambda names, c, n: c)
    assert len(seen) == sum(stats.counts[g[0]] for g in stats.groups) > 0  # one per sample and distinct input
    assert set(seen) == {(torch.bfloat16, True)}
    assert not _tf32_engaged()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prepared_input_on_cuda_solves_as_linalg_solve() -> None:
    """On CUDA too the shared LU gives torch.linalg.solve's bits, and a CorDA on the device equals the
    per-target math of before there."""
    cuda = torch.device("cuda")
    cov = _covariance(300, 900, seed=3).to(cuda)
    inp = prepare(cov, cuda)
    rhs = torch.randn(16, 300, generator=torch.Generator(device="cuda").manual_seed(0), dtype=torch.float64,
                      device="cuda").T  # fmt: skip
    assert torch.equal(inp.solve(rhs), torch.linalg.solve(inp.c_d, rhs))
    w = torch.randn(64, 300, generator=torch.Generator(device="cuda").manual_seed(1), dtype=torch.float64,
                    device="cuda")  # fmt: skip
    opts = InitOptions(rank=4, alpha=8.0, extra={"corda_mode": "ipm"})
    _equal(corda.corda(w, opts, statistics=inp), _unshared(w, cov, opts))


def test_corda_covariance_keeper_leaves_a_host_covariance_alone() -> None:
    from svdtool.commands.init_statistics import covariance_keeper

    cov = torch.eye(4, dtype=torch.float64)
    assert covariance_keeper()(["w"], cov, 3) is cov


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_corda_covariance_keeper_keeps_what_fits_on_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """C stays on the GPU while the kept ones fit in KEEP_SHARE of its memory; the next goes to the host."""
    from svdtool.commands import init_statistics

    covs = [torch.eye(512, dtype=torch.float64, device="cuda") for _ in range(3)]
    total = torch.cuda.mem_get_info()[1]
    monkeypatch.setattr(init_statistics, "KEEP_SHARE", 2.5 * covs[0].numel() * 8 / total)  # room for two
    keep = init_statistics.covariance_keeper()
    kept = [keep(["w"], c, 1) for c in covs]
    assert [k.device.type for k in kept] == ["cuda", "cuda", "cpu"]
    assert kept[0] is covs[0] and torch.equal(kept[2], covs[2].cpu())
    assert init_statistics.covariance_keeper()(["w"], covs[2], 1).device.type == "cuda"  # a new run counts anew
