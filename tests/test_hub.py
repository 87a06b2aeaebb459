"""The Hub path of ``svdtool spectrum owner/name``: downloads, the cache, revisions, ``--stream``, tokens
and every error message, against the loopback fake Hub in ``tests/fake_hub.py``.

The CLI runs in a subprocess because huggingface_hub reads ``HF_ENDPOINT`` / ``HF_HUB_OFFLINE`` at import.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from svdtool.commands.spectrum import SpectrumRequest, load_sigmas, run_spectrum
from svdtool.errors import SvdtoolError
from svdtool.loading.hub import choose_weights
from svdtool.loading.safetensors_local import read_header
from tests.fake_hub import FakeHub, stream_bytes
from tests.helpers import assert_close

REPO = "acme/tiny-llama"
TOKEN = "hf_allowed_token"


def svdtool(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "svdtool", "spectrum", *args, "--device", "cpu"]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


def ok_json(r: subprocess.CompletedProcess[str]) -> dict:
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout)  # stdout holds the JSON and nothing else


def assert_error(r: subprocess.CompletedProcess[str], *phrases: str, out: Path | None = None) -> str:
    """Exit 2, one non-empty stderr line holding every phrase, no traceback, nothing written."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for p in phrases:
        assert p in lines[0], lines[0]
    assert r.stdout == ""
    if out is not None:
        assert not out.exists()
    return lines[0]


def local_sigmas(folder: Path) -> dict[str, np.ndarray]:
    return run_spectrum(SpectrumRequest(model=str(folder), device="cpu")).sigmas


def assert_same_sigmas(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, s in expected.items():
        assert_close(actual[name], s, "exact64", name)


def shard_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.safetensors"))


def cached_files(hf_home: Path, suffix: str) -> list[Path]:
    return [p for p in (hf_home / "hub").rglob(f"*{suffix}")] if (hf_home / "hub").exists() else []


@pytest.fixture
def sharded(tiny_checkpoints: dict[tuple[str, bool], Path]) -> Path:
    return tiny_checkpoints[("llama", True)]


# --------------------------------------------------------------------------- download mode


def test_download_matches_local_and_reuses_cache(fake_hub: FakeHub, sharded: Path, tmp_path: Path) -> None:
    # Decoys a careless loader would fetch: a duplicate consolidated file and a pickle.
    sha = fake_hub.add_repo(REPO, sharded, files={"consolidated.safetensors": b"x" * 64, "pytorch_model.bin": b"y"})
    env, out = fake_hub.env(tmp_path / "hf"), tmp_path / "out"
    r = svdtool(env, tmp_path, REPO, "--out", str(out), "--format", "json")
    m = ok_json(r)["manifest"]
    assert (m["source_kind"], m["sha"], m["revision"], m["model"]) == ("hub", sha, None, REPO)
    assert [f["path"] for f in m["files"]] == shard_names(sharded)
    assert [f["size"] for f in m["files"]] == [(sharded / f).stat().st_size for f in shard_names(sharded)]
    fetched = {h.filename for h in fake_hub.file_hits(method="GET")}
    assert fetched == {"config.json", "model.safetensors.index.json", *shard_names(sharded)}
    assert_same_sigmas(load_sigmas(out), local_sigmas(sharded))

    fake_hub.reset()
    out2 = tmp_path / "out2"
    r = svdtool(env, tmp_path, REPO, "--out", str(out2), "--format", "json")
    assert ok_json(r)["manifest"]["sha"] == sha
    assert fake_hub.file_hits() == []  # neither HEAD nor GET: every file came from the cache
    assert_same_sigmas(load_sigmas(out2), local_sigmas(sharded))


def test_revisions_pin_the_commit(fake_hub: FakeHub, tiny_checkpoints: dict, tmp_path: Path) -> None:
    from tests.conftest import build_tiny_model, save_tiny

    main_dir = tiny_checkpoints[("llama", False)]
    v1_dir = save_tiny(build_tiny_model("llama", seed=1), tmp_path / "v1", sharded=False)
    sha_main = fake_hub.add_repo(REPO, main_dir, revisions={"main": "a" * 40})
    sha_v1 = fake_hub.add_repo(REPO, v1_dir, revisions={"v1": "b" * 40})
    env = fake_hub.env(tmp_path / "hf")
    at = ok_json(svdtool(env, tmp_path, f"{REPO}@v1", "--format", "json"))
    opt = ok_json(svdtool(env, tmp_path, REPO, "--revision", "v1", "--out", str(tmp_path / "o"), "--format", "json"))
    main = ok_json(svdtool(env, tmp_path, REPO, "--format", "json"))
    assert (at["manifest"]["sha"], at["manifest"]["revision"]) == (sha_v1, "v1")
    assert (opt["manifest"]["sha"], opt["manifest"]["revision"]) == (sha_v1, "v1")
    assert main["manifest"]["sha"] == sha_main
    assert_same_sigmas(load_sigmas(tmp_path / "o"), local_sigmas(v1_dir))
    first = [m["sigma_max"] for m in at["matrices"]]
    assert first == [m["sigma_max"] for m in opt["matrices"]]
    assert first != [m["sigma_max"] for m in main["matrices"]]


def test_offline_mode_uses_the_cache(fake_hub: FakeHub, sharded: Path, tmp_path: Path) -> None:
    fake_hub.add_repo(REPO, sharded)
    env = fake_hub.env(tmp_path / "hf")
    online = ok_json(svdtool(env, tmp_path, REPO, "--format", "json"))
    fake_hub.reset()
    offline = ok_json(svdtool({**env, "HF_HUB_OFFLINE": "1"}, tmp_path, REPO, "--format", "json"))
    assert fake_hub.hits == []  # not one request
    assert offline["manifest"]["sha"] == online["manifest"]["sha"]
    assert [m["sigma_max"] for m in offline["matrices"]] == [m["sigma_max"] for m in online["matrices"]]


def test_unreachable_hub_uses_the_cache(fake_hub: FakeHub, sharded: Path, tmp_path: Path) -> None:
    fake_hub.add_repo(REPO, sharded)
    env = fake_hub.env(tmp_path / "hf")
    sha = ok_json(svdtool(env, tmp_path, REPO, "--format", "json"))["manifest"]["sha"]
    gone = {**env, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    assert ok_json(svdtool(gone, tmp_path, REPO, "--format", "json"))["manifest"]["sha"] == sha


# --------------------------------------------------------------------------- stream mode


@pytest.mark.parametrize("cdn", [True, False], ids=["redirect-to-cdn", "direct"])
def test_stream_reads_only_headers_and_tensors(sharded: Path, tmp_path: Path, cdn: bool) -> None:
    with FakeHub(cdn=cdn) as hub:
        sha = hub.add_repo(REPO, sharded, gated_token=TOKEN)
        hf_home, out = tmp_path / "hf", tmp_path / "out"
        r = svdtool(hub.env(hf_home, token=TOKEN), tmp_path, REPO, "--stream", "--out", str(out), "--format", "json")
        m = ok_json(r)["manifest"]
        shards = shard_names(sharded)
        assert (m["source_kind"], m["sha"]) == ("hub-stream", sha)
        assert [(f["path"], f["size"]) for f in m["files"]] == [(s, (sharded / s).stat().st_size) for s in shards]
        assert_same_sigmas(load_sigmas(out), local_sigmas(sharded))

        # Bytes: each shard's 8-byte length + header, plus every 2-D tensor, nothing more.
        gets = hub.file_hits(".safetensors", method="GET")
        assert sum(h.nbytes for h in gets) == stream_bytes(sharded, shards)
        assert all(h.range is not None for h in gets)  # never a plain GET of a shard
        sizes = {s: (sharded / s).stat().st_size for s in shards}
        assert all(h.nbytes < sizes[h.filename] for h in gets if h.filename in sizes)
        if cdn:  # the token goes to the Hub, never to the CDN the Hub redirects to
            assert any(h.server == "cdn" for h in gets)
            assert all(h.auth is None for h in hub.hits if h.server == "cdn")
            assert all(h.auth == f"Bearer {TOKEN}" for h in hub.hits if h.server == "hub" and "/resolve/" in h.path)
        assert cached_files(hf_home, ".safetensors") == []  # no shard in snapshots/ …
        blob_sizes = sorted(p.stat().st_size for p in (hf_home / "hub").rglob("blobs/*"))
        small = sorted(p.stat().st_size for p in (sharded / "config.json", sharded / "model.safetensors.index.json"))
        assert blob_sizes == small  # … nor in blobs/: only the config and the index were downloaded


def test_stream_retries_and_resumes(fake_hub: FakeHub, sharded: Path, tmp_path: Path) -> None:
    fake_hub.add_repo(REPO, sharded)
    fake_hub.inject("503", "cut", "cut")  # a refused request, then two bodies that stop halfway
    out = tmp_path / "out"
    ok_json(svdtool(fake_hub.env(tmp_path / "hf"), tmp_path, REPO, "--stream", "--out", str(out), "--format", "json"))
    assert fake_hub.faults == []
    assert_same_sigmas(load_sigmas(out), local_sigmas(sharded))
    gets = [h for h in fake_hub.file_hits(".safetensors", method="GET") if h.status != 302]  # not the redirects
    n2d = sum(
        1
        for s in shard_names(sharded)
        for k, e in read_header(sharded / s)[1].items()
        if k != "__metadata__" and len(e["shape"]) == 2
    )
    assert len(gets) == 2 * len(shard_names(sharded)) + n2d + 3  # each failure cost one more request …
    assert [h.range for h in gets[:4]] == ["bytes=0-7", "bytes=0-7", "bytes=4-7", "bytes=6-7"]  # … resuming


def test_stream_checks_the_header_against_the_file_size(fake_hub: FakeHub, tiny_llama: Path, tmp_path: Path) -> None:
    data = (tiny_llama / "model.safetensors").read_bytes()
    fake_hub.add_repo(REPO, files={"model.safetensors": data[:-10]})  # a truncated upload
    r = svdtool(fake_hub.env(tmp_path / "hf"), tmp_path, REPO, "--stream", "--out", str(tmp_path / "out"))
    assert_error(r, f"{REPO}/model.safetensors is truncated", f"the file has {len(data) - 10}", out=tmp_path / "out")


def test_single_file_repo_without_config(fake_hub: FakeHub, tiny_llama: Path, tmp_path: Path) -> None:
    fake_hub.add_repo(REPO, files={"model.safetensors": (tiny_llama / "model.safetensors").read_bytes()})
    r = svdtool(fake_hub.env(tmp_path / "hf"), tmp_path, REPO, "--format", "json")
    assert ok_json(r)["manifest"]["files"][0]["path"] == "model.safetensors"
    assert "No files matched" not in r.stderr and "Fetching" not in r.stderr  # no hub noise off a terminal


# --------------------------------------------------------------------------- tokens and gated repos


def test_gated_repo_needs_a_token(fake_hub: FakeHub, tiny_llama: Path, tmp_path: Path) -> None:
    fake_hub.add_repo(REPO, tiny_llama, gated_token=TOKEN)
    env, out = fake_hub.env(tmp_path / "hf"), tmp_path / "out"
    line = assert_error(svdtool(env, tmp_path, REPO, "--out", str(out)), "gated", "--token", out=out)
    assert "no Hub token was found" in line and "accept its license" in line and f"/{REPO}" in line
    assert "`hf auth login`" in line and "HF_TOKEN" in line
    line = assert_error(svdtool(env, tmp_path, REPO, "--token", "hf_wrong", "--out", str(out)), "gated", out=out)
    assert "your token has no access" in line
    ok_json(svdtool(env, tmp_path, REPO, "--token", TOKEN, "--format", "json"))
    ok_json(svdtool(fake_hub.env(tmp_path / "hf2", token=TOKEN), tmp_path, REPO, "--format", "json"))


# --------------------------------------------------------------------------- other errors


def test_unknown_repo(fake_hub: FakeHub, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = svdtool(fake_hub.env(tmp_path / "hf"), tmp_path, "acme/nope", "--out", str(out))
    assert_error(r, "acme/nope does not exist on the Hub", "private", "--token", out=out)


def test_unknown_revision(fake_hub: FakeHub, tiny_llama: Path, tmp_path: Path) -> None:
    fake_hub.add_repo(REPO, tiny_llama)
    out = tmp_path / "out"
    r = svdtool(fake_hub.env(tmp_path / "hf"), tmp_path, f"{REPO}@no-such-branch", "--out", str(out))
    assert_error(r, "revision 'no-such-branch' does not exist in acme/tiny-llama", out=out)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("stream", [False, True], ids=["download", "stream"])
def test_no_network(fake_hub: FakeHub, tmp_path: Path, stream: bool) -> None:
    env = {**fake_hub.env(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}
    out = tmp_path / "out"
    t0 = time.monotonic()
    r = svdtool(env, tmp_path, REPO, "--out", str(out), *(["--stream"] if stream else []))
    assert time.monotonic() - t0 < 20  # no retry backoff on a refused connection
    assert_error(r, "cannot reach the Hugging Face Hub", "HF_HUB_OFFLINE=1", "local folder", out=out)


def test_offline_without_cache(fake_hub: FakeHub, tiny_llama: Path, tmp_path: Path) -> None:
    fake_hub.add_repo(REPO, tiny_llama)
    env, out = {**fake_hub.env(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}, tmp_path / "out"
    assert_error(svdtool(env, tmp_path, REPO, "--out", str(out)), "HF_HUB_OFFLINE is set", "not", "cache", out=out)
    assert_error(svdtool(env, tmp_path, REPO, "--stream"), "--stream", "HF_HUB_OFFLINE")
    assert fake_hub.hits == []


def test_repo_without_safetensors(fake_hub: FakeHub, tmp_path: Path) -> None:
    fake_hub.add_repo(REPO, files={"config.json": b'{"model_type": "llama"}', "pytorch_model.bin": b"\x80\x02"})
    out = tmp_path / "out"
    r = svdtool(fake_hub.env(tmp_path / "hf"), tmp_path, REPO, "--out", str(out))
    assert_error(r, "no safetensors weights", "pytorch_model.bin", "svdtool reads safetensors only", out=out)
    assert not fake_hub.file_hits("pytorch_model.bin")


# --------------------------------------------------------------------------- weight selection (no network)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (["model.safetensors", "consolidated.safetensors", "config.json"], ["model.safetensors"]),
        (
            ["b.safetensors", "a.safetensors", "adapter_model.safetensors", "sub/c.safetensors"],
            ["a.safetensors", "b.safetensors"],
        ),
    ],
)
def test_choose_weights(files: list[str], expected: list[str], tmp_path: Path) -> None:
    assert choose_weights(files, tmp_path, REPO) == expected


def test_choose_weights_prefers_the_index(tmp_path: Path) -> None:
    index = {"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    files = ["model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    got = choose_weights([*files, "model.safetensors", "consolidated.safetensors"], tmp_path, REPO)
    assert got == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    with pytest.raises(SvdtoolError, match="lists shards the repo does not have: model-00002"):
        choose_weights(files[:2], tmp_path, REPO)


@pytest.mark.parametrize(
    ("files", "phrase"),
    [
        (["pytorch_model.bin", "config.json"], "svdtool reads safetensors only"),
        (["model-q4.gguf"], "pass its path"),
        (["README.md", "original/consolidated.safetensors"], "holds no weights at its root"),
    ],
)
def test_choose_weights_errors(files: list[str], phrase: str, tmp_path: Path) -> None:
    with pytest.raises(SvdtoolError, match=phrase):
        choose_weights(files, tmp_path, REPO)


# --------------------------------------------------------------------------- helpers others build on


def test_snapshot_files_brings_the_tokenizer(fake_hub: FakeHub, tiny_llama: Path, tmp_path: Path) -> None:
    extra = {
        "tokenizer.json": b"{}",
        "tokenizer_config.json": b"{}",
        "special_tokens_map.json": b"{}",
        "chat_template.jinja": b"{{ x }}",
        "README.md": b"# no",
        "original/params.json": b"{}",
        "consolidated.safetensors": b"z",
    }
    sha = fake_hub.add_repo(REPO, tiny_llama, files=extra)
    code = (
        "import json; from svdtool.loading.hub import snapshot_files as s;"
        f"p, sha = s({REPO!r}); print(json.dumps([str(p), sha]))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], env=fake_hub.env(tmp_path / "hf"), cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    folder, got_sha = json.loads(r.stdout)
    assert got_sha == sha and Path(folder).name == sha
    names = sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file())
    assert names == sorted(
        [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "chat_template.jinja",
        ]
    )


def test_fake_hub_serves_datasets(fake_hub: FakeHub, tmp_path: Path) -> None:
    """The fake also serves dataset repos with nested paths and URL-quoted revisions (calibration presets)."""
    sha = fake_hub.add_repo(
        "openai/gsm8k",
        files={"main/train-00000-of-00001.parquet": b"PAR1 train", "README.md": b"hi"},
        repo_type="dataset",
        revisions={"main": "c" * 40, "refs/convert/parquet": "c" * 40},
    )
    code = (
        "import huggingface_hub as h, json;"
        "p = h.hf_hub_download('openai/gsm8k', 'main/train-00000-of-00001.parquet', repo_type='dataset',"
        " revision='refs/convert/parquet');"
        "print(json.dumps([open(p, 'rb').read().decode(), h.list_repo_files('openai/gsm8k', repo_type='dataset'),"
        " h.HfFileSystem().cat_file('datasets/openai/gsm8k/main/train-00000-of-00001.parquet', start=5).decode()]))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], env=fake_hub.env(tmp_path / "hf"), cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    body, files, tail = json.loads(r.stdout)
    assert (body, tail) == ("PAR1 train", "train")
    assert files == ["README.md", "main/train-00000-of-00001.parquet"]
    assert sha == "c" * 40
    assert any(h.range == "bytes=5-9" for h in fake_hub.file_hits(".parquet"))
