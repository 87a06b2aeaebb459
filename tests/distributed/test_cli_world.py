"""How the CLI reads a launcher's environment, before any rendezvous: what turns distributed mode on, and
which commands refuse it, in one line printed by rank 0 only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from svdtool.engine import world

ROOT = Path(__file__).resolve().parents[2]


def _svdtool(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")}
    return subprocess.run(
        [sys.executable, "-m", "svdtool", *args],
        env={**base, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("env", "size", "rank"),
    [
        ({}, 1, 0),
        ({"WORLD_SIZE": "1", "RANK": "0"}, 1, 0),
        ({"WORLD_SIZE": "4", "RANK": "3"}, 4, 3),
        ({"WORLD_SIZE": "4", "RANK": "3", "SVDTOOL_DISTRIBUTED": "off"}, 1, 0),
        ({"WORLD_SIZE": "four"}, 1, 0),
        ({"WORLD_SIZE": "1", "RANK": "0", "SVDTOOL_DISTRIBUTED": "on"}, 1, 0),
        ({"SVDTOOL_DISTRIBUTED": "on"}, 1, 0),
    ],
)
def test_the_environment_decides(monkeypatch: pytest.MonkeyPatch, env: dict, size: int, rank: int) -> None:
    for var in ("WORLD_SIZE", "RANK", "SVDTOOL_DISTRIBUTED"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert (world.env_world_size(), world.env_rank()) == (size, rank)
    # Joined: a launcher's world of more than one rank, or of one when forced on (no launcher, no job).
    assert world.env_distributed() == (size > 1 or ("WORLD_SIZE" in env and env.get("SVDTOOL_DISTRIBUTED") == "on"))


@pytest.mark.parametrize("rank", ["0", "1"])
def test_single_process_commands_refuse_torchrun_in_one_line(tmp_path: Path, rank: str) -> None:
    env = {"WORLD_SIZE": "2", "RANK": rank, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "9"}
    r = _svdtool(env, "verify", str(tmp_path))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    if rank == "0":
        assert r.stderr.strip().splitlines() == [
            "error: svdtool verify runs in one process: start it without torchrun (under torchrun: spectrum, "
            "init, coverage; see docs/distributed.md)"
        ]
    else:
        assert r.stderr == ""  # rank 0 speaks for every rank


def test_a_launcher_without_master_address_is_one_line(tmp_path: Path) -> None:
    r = _svdtool({"WORLD_SIZE": "2", "RANK": "0"}, "spectrum", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: WORLD_SIZE is set but MASTER_ADDR is not: start svdtool with torchrun (or set all three)"
    ]
