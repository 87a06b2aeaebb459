"""``spectrum`` on two gloo ranks gives the single-process result: the same σ bit for bit, the same JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from svdtool.commands.spectrum import SpectrumRequest, load_sigmas, run_spectrum, write_spectrum
from svdtool.engine.world import PeerFailed, current
from svdtool.errors import SvdtoolError
from tests.distributed.harness import needs_fork, run_distributed

pytestmark = needs_fork

#: Manifest fields that say how and when a run happened, not what it computed.
RUN_FIELDS = ("device", "timings", "started", "versions")


def _spectrum(rank: int, model: str, out: str, size: int = 2) -> None:
    assert current().size == size and current().rank == rank and current().distributed
    run = run_spectrum(SpectrumRequest(model=model, device="cpu", ranks=[2, 4], command=["svdtool", "spectrum"]))
    # Every rank returns the whole run; each writes it so the test can compare them all.
    write_spectrum(run, Path(out) / f"rank{rank}")


def _numbers(folder: Path) -> dict:
    data = json.loads((folder / "spectrum.json").read_text())
    for key in RUN_FIELDS:
        data["manifest"].pop(key)
    for m in data["matrices"]:
        m.pop("seconds")
    return data


def test_two_ranks_equal_one_process(tiny_checkpoints: dict, tmp_path: Path) -> None:
    model = str(tiny_checkpoints[("llama", True)])  # sharded: the ranks read from several files
    run_distributed(_spectrum, tmp_path, model, str(tmp_path))
    single = run_spectrum(SpectrumRequest(model=model, device="cpu", ranks=[2, 4], command=["svdtool", "spectrum"]))
    write_spectrum(single, tmp_path / "single")
    want = load_sigmas(tmp_path / "single")
    for rank in (0, 1):
        got = load_sigmas(tmp_path / f"rank{rank}")
        assert list(got) == list(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)  # bit for bit
        assert _numbers(tmp_path / f"rank{rank}") == _numbers(tmp_path / "single")
    assert "2 ranks" in json.loads((tmp_path / "rank0" / "spectrum.json").read_text())["manifest"]["device"]


def test_one_forced_rank_equals_one_process(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SVDTOOL_DISTRIBUTED=on: the distributed path (plan check, phases, gathers) at world size 1.
    monkeypatch.setenv("SVDTOOL_DISTRIBUTED", "on")
    run_distributed(_spectrum, tmp_path, str(tiny_llama), str(tmp_path), 1, world=1)
    monkeypatch.delenv("SVDTOOL_DISTRIBUTED")
    single = run_spectrum(
        SpectrumRequest(model=str(tiny_llama), device="cpu", ranks=[2, 4], command=["svdtool", "spectrum"])
    )
    write_spectrum(single, tmp_path / "single")
    want, got = load_sigmas(tmp_path / "single"), load_sigmas(tmp_path / "rank0")
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert _numbers(tmp_path / "rank0") == _numbers(tmp_path / "single")
    manifest = json.loads((tmp_path / "rank0" / "spectrum.json").read_text())["manifest"]
    assert manifest["device"].startswith("1 rank (torch.distributed), ")


def _bad_include(rank: int, model: str, out: str) -> None:
    include = ["*q_proj*"] if rank == 0 else ["*k_proj*"]  # a per-node typo
    try:
        run_spectrum(SpectrumRequest(model=model, device="cpu", include=include))
    except SvdtoolError as exc:
        Path(out, f"rank{rank}.err").write_text(f"{type(exc).__name__}|{exc.exit_code}|{exc}")
        return
    raise AssertionError("differing --include was accepted")


def test_differing_arguments_are_refused(tiny_llama: Path, tmp_path: Path) -> None:
    run_distributed(_bad_include, tmp_path, str(tiny_llama), str(tmp_path))
    errors = [(tmp_path / f"rank{r}.err").read_text().split("|") for r in (0, 1)]
    for kind, code, message in errors:
        assert (kind, code) == ("SvdtoolError", "2")
        assert message.startswith("ranks disagree on the arguments or the work plan: rank 1 differs from rank 0")


def _one_rank_fails(rank: int, model: str, out: str) -> None:
    # Rank 1 asks for a model that does not exist; rank 0 must not wait for it in a collective.
    try:
        run_spectrum(SpectrumRequest(model=model if rank == 0 else model + "-missing", device="cpu"))
    except SvdtoolError as exc:
        Path(out, f"rank{rank}.err").write_text(f"{type(exc).__name__}|{exc.exit_code}|{exc}")


def test_a_failing_rank_stops_every_rank_with_its_message(tiny_llama: Path, tmp_path: Path) -> None:
    run_distributed(_one_rank_fails, tmp_path, str(tiny_llama), str(tmp_path))
    kind0, code0, msg0 = (tmp_path / "rank0.err").read_text().split("|")
    kind1, code1, msg1 = (tmp_path / "rank1.err").read_text().split("|")
    assert (kind0, kind1) == (PeerFailed.__name__, "SvdtoolError")
    assert code0 == code1 == "2"
    assert msg0 == f"rank 1: {msg1}" and "does not exist" in msg1


@pytest.mark.parametrize("include", [["*layers.0.self_attn.q_proj*"]])
def test_more_ranks_than_matrices_is_fine(tiny_llama: Path, tmp_path: Path, include: list[str]) -> None:
    def body(rank: int, model: str, out: str) -> None:
        run = run_spectrum(SpectrumRequest(model=model, device="cpu", include=include))
        Path(out, f"rank{rank}.n").write_text(str(len(run.result.matrices)))

    run_distributed(body, tmp_path, str(tiny_llama), str(tmp_path), world=3)
    assert {(tmp_path / f"rank{r}.n").read_text() for r in range(3)} == {"1"}
