"""``torchrun -m svdtool`` end to end: the packaged SmolLM2 on two ranks gives the single-process
spectrum and init, a user's mistake is one line, and two agents on 127.0.0.1 act as two nodes."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from svdtool.commands.spectrum import load_sigmas
from tests.distributed.harness import needs_fork

pytestmark = [needs_fork, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    # One BLAS thread per process, as torchrun gives every rank: the same summation order everywhere.
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "SVDTOOL_DIST_TIMEOUT": "120"}


def _svdtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "svdtool", *args], env=_env(), capture_output=True, text=True, timeout=300
    )


def _torchrun(*args: str, launcher: tuple[str, ...] = ("--standalone", "--nproc-per-node", "2")) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "svdtool", *args]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _done(p: subprocess.Popen) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=300)
    return p.returncode, out, err


def _spectrum_numbers(stdout: str) -> dict:
    data = json.loads(stdout)  # exactly one JSON document on stdout
    for key in ("device", "timings", "started", "versions", "command"):  # the command differs in --out
        data["manifest"].pop(key)
    for m in data["matrices"]:
        m.pop("seconds")
    return data


def _same_sigmas(a: Path, b: Path) -> None:
    sa, sb = load_sigmas(a), load_sigmas(b)
    assert list(sa) == list(sb)
    for name in sa:
        np.testing.assert_array_equal(sa[name], sb[name], err_msg=name)


def _init_files(folder: Path) -> dict[str, str]:
    files = sorted(folder.rglob("*.safetensors")) + [folder / "model.safetensors.index.json"]
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.real
def test_smollm2_spectrum_and_init_under_torchrun(smollm2_dir: Path, tmp_path: Path) -> None:
    model = str(smollm2_dir)
    spec = ("spectrum", model, "--device", "cpu", "--include", "*layers.0.*", "--format", "json")
    init = ("init", model, "--method", "pissa", "-r", "8", "--targets", "*layers.[01].*_proj", "--device", "cpu")
    rc, out, err = _done(_torchrun(*spec, "--out", str(tmp_path / "spec2")))
    assert rc == 0, err
    one = _svdtool(*spec, "--out", str(tmp_path / "spec1"))
    assert one.returncode == 0, one.stderr
    assert _spectrum_numbers(out) == _spectrum_numbers(one.stdout)
    _same_sigmas(tmp_path / "spec2", tmp_path / "spec1")
    assert err.count("wrote ") == 2  # rank 0 alone names its files

    rc, out, err = _done(_torchrun(*init, "--out", str(tmp_path / "init2")))
    assert rc == 0, err
    one = _svdtool(*init, "--out", str(tmp_path / "init1"))
    assert one.returncode == 0, one.stderr
    assert _init_files(tmp_path / "init2") == _init_files(tmp_path / "init1")
    assert out.count("wrote ") == 1  # one table, one summary line

    # A user's mistake: one line from rank 0, no traceback from any rank, no folder.
    rc, out, err = _done(_torchrun(*init[:5], "0", *init[6:], "--out", str(tmp_path / "bad")))
    assert rc != 0
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert lines == ["error: --rank 0: the rank must be a positive integer"]
    assert "Traceback" not in err.split("ChildFailedError")[0].split("failed (exitcode: 2)")[0]
    assert not (tmp_path / "bad").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_agents_on_localhost_act_as_two_nodes(tiny_checkpoints: dict, tmp_path: Path) -> None:
    model = str(tiny_checkpoints[("llama", True)])
    args = ("spectrum", model, "--device", "cpu", "--ranks", "2,4", "--format", "json")
    rdzv = ("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d")
    rdzv += ("--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-id", "svdtool-test")
    agents = [_torchrun(*args, "--out", str(tmp_path / f"node{k}"), launcher=rdzv) for k in range(2)]
    results = [_done(a) for a in agents]
    assert [rc for rc, _, _ in results] == [0, 0], [e for _, _, e in results]
    # Only the agent whose worker got rank 0 prints and writes; which one that is, the rendezvous decides.
    printed = [k for k, (_, out, _) in enumerate(results) if out.strip()]
    assert len(printed) == 1
    one = _svdtool(*args, "--out", str(tmp_path / "single"))
    assert _spectrum_numbers(results[printed[0]][1]) == _spectrum_numbers(one.stdout)
    _same_sigmas(tmp_path / f"node{printed[0]}", tmp_path / "single")
    assert not (tmp_path / f"node{1 - printed[0]}").exists()


def test_each_rank_streams_only_its_own_tensors_from_the_hub(tiny_checkpoints: dict, tmp_path: Path) -> None:
    from tests.fake_hub import FakeHub, stream_bytes

    folder = tiny_checkpoints[("llama", True)]
    shards = sorted(p.name for p in folder.glob("*.safetensors"))
    with FakeHub() as hub:
        hub.add_repo("acme/tiny-llama", folder)
        env = {**_env(), **hub.env(tmp_path / "hf")}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "svdtool"]
        cmd += ["spectrum", "acme/tiny-llama", "--stream", "--device", "cpu", "--format", "json"]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert len(json.loads(r.stdout)["matrices"]) == 16  # 2 blocks × 7, the embedding, lm_head
        # Both ranks read every header (the plan needs them); each 2-D tensor's bytes go to one rank only.
        gets = hub.file_hits(".safetensors", method="GET")
        assert sum(h.nbytes for h in gets) == stream_bytes(folder, shards, readers=2)


@pytest.mark.gpu
def test_nccl_ranks_on_two_gpus_equal_one_gpu(tiny_checkpoints: dict, tmp_path: Path) -> None:
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    model = str(tiny_checkpoints[("llama", True)])
    args = ("spectrum", model, "--device", "cuda", "--format", "json")
    rc, out, err = _done(_torchrun(*args, "--out", str(tmp_path / "two")))
    assert rc == 0, err
    one = _svdtool(*args, "--out", str(tmp_path / "one"))
    assert _spectrum_numbers(out) == _spectrum_numbers(one.stdout)
    _same_sigmas(tmp_path / "two", tmp_path / "one")
