"""Checkpoints svdtool refuses, with advice, and fuzzing of the parsers that read untrusted bytes.

Property tests (hypothesis): random bytes, truncations, bit flips and huge lengths fed to the safetensors
header parser, the index parser and the GGUF opener. Only SvdtoolError may escape, never another exception.
"""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svdtool.errors import SvdtoolError
from svdtool.loading import open_checkpoint
from svdtool.loading.safetensors_local import find_shards, parse_header
from tests.helpers import run_cli

# About 2,000 examples in all (~40 s on a busy 2-core machine): each one writes and opens a real file.
FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _error_line(args: list, capsys: pytest.CaptureFixture) -> str:
    code, stdout, stderr = run_cli(args, capsys)
    lines = [x for x in stderr.splitlines() if x.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# ---------------------------------------------------------------- refusals with advice
@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "weights.ckpt"])
def test_pickle_only(tmp_path: Path, capsys: pytest.CaptureFixture, name: str) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / name).write_bytes(b"\x80\x04K\x01.")  # a pickle: never opened
    for target in (folder, folder / name):
        line = _error_line(["spectrum", target], capsys)
        assert "never loads pickle files" in line and "save_pretrained(NEW_PATH, safe_serialization=True)" in line


@pytest.fixture
def sharded(tiny_checkpoints: dict, tmp_path: Path) -> Path:
    dst = tmp_path / "sharded"
    shutil.copytree(tiny_checkpoints[("llama", True)], dst)
    return dst


def test_index_names_a_missing_shard(sharded: Path, capsys: pytest.CaptureFixture) -> None:
    shard = sorted(sharded.glob("model-*.safetensors"))[1]
    shard.unlink()
    line = _error_line(["spectrum", sharded], capsys)
    assert f"missing shards listed in model.safetensors.index.json: {shard.name}" in line and "fetch" in line


def test_same_tensor_in_two_shards(sharded: Path, capsys: pytest.CaptureFixture) -> None:
    shards = sorted(sharded.glob("model-*.safetensors"))
    (sharded / "model.safetensors.index.json").unlink()  # no index: every root shard is read
    shutil.copyfile(shards[0], sharded / "model-stale.safetensors")
    line = _error_line(["spectrum", sharded], capsys)
    assert "is stored twice, in both" in line and "model-stale.safetensors" in line and "stale shard" in line


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"num_hidden_layers": 3}, "the weights have 2 layers, config.json says 3"),
        (
            {"vocab_size": 100},
            "model.embed_tokens.weight is [96, 32], config.json says vocab_size 100 × hidden size 32",
        ),
    ],
)
def test_config_disagrees_with_tensors(  # type: ignore[no-untyped-def]
    lora_ga_tiny: dict, tmp_path: Path, capsys, change: dict, needle: str
) -> None:
    model = tmp_path / "model"
    shutil.copytree(lora_ga_tiny["llama"], model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, **change}))
    out = tmp_path / "out"
    line = _error_line(["init", model, "--method", "pissa", "-r", "2", "--out", out, "--device", "cpu"], capsys)
    assert "config.json does not match the weights" in line and needle in line
    line = _error_line(["coverage", model, "--calib", lora_ga_tiny["qa"], "--max-length", "24", "--device", "cpu"],
                       capsys)  # fmt: skip
    assert needle in line
    assert not out.exists()


def _tiny_gguf(path: Path, raw_type: str | None = None) -> Path:
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("blk.0.attn_q.weight", rng.standard_normal((8, 32)).astype(np.float32))
    if raw_type is not None:
        qtype = gguf.GGMLQuantizationType[raw_type]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        w.add_tensor("blk.0.ffn_down.weight", np.zeros((4, 256 // block * size), dtype=np.uint8), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_type_the_reader_cannot_dequantize(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _tiny_gguf(tmp_path / "q.gguf", "Q8_K")
    line = _error_line(["spectrum", path], capsys)
    assert "tensor blk.0.ffn_down.weight is stored as Q8_K, which the gguf package" in line
    assert "cannot dequantize: upgrade it (pip install -U gguf)" in line and "llama-quantize" in line


# ---------------------------------------------------------------- fuzzing: only SvdtoolError escapes
def _valid_safetensors() -> bytes:
    header = {
        "__metadata__": {"format": "pt"},
        "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes(range(32))


VALID = _valid_safetensors()


def _mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    flips = st.lists(st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 7)), min_size=1, max_size=8).map(
        lambda fl: bytes(b ^ (1 << bit) if i in {p for p, _ in fl} and (bit := dict(fl)[i]) >= 0 else b
                         for i, b in enumerate(valid))
    )  # fmt: skip
    truncated = st.integers(0, len(valid)).map(lambda n: valid[:n])
    huge = st.integers(0, 2**64 - 1).map(lambda n: struct.pack("<Q", n) + valid[8:])
    return st.one_of(st.binary(max_size=300), flips, truncated, huge)


def _json_values() -> st.SearchStrategy[object]:
    leaves = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8))
    return st.recursive(leaves, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=6), c,
                        max_size=4)), max_leaves=12)  # fmt: skip


def _header_file(entries: dict) -> bytes:
    raw = json.dumps(entries).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(64)


def _only_svdtool_error(data: bytes, name: str = "model.safetensors") -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        try:
            with open_checkpoint(str(path)) as ckpt:
                for info in ckpt.tensors():
                    ckpt.read(info)
        except SvdtoolError:
            pass


@FUZZ
@given(_mutations(VALID))
def test_fuzz_safetensors_file(data: bytes) -> None:
    try:
        parse_header(data, len(data), "x")
    except SvdtoolError:
        pass
    _only_svdtool_error(data)


@settings(FUZZ, max_examples=300)
@given(st.dictionaries(st.text(max_size=6), _json_values(), max_size=4), st.sampled_from(["a", "__metadata__"]))
def test_fuzz_safetensors_header_entries(entries: dict, key: str) -> None:
    """Well-formed JSON with entries of every shape: wrong types, huge or negative numbers."""
    _only_svdtool_error(_header_file({key: entries}))
    _only_svdtool_error(_header_file(entries))


@FUZZ
@given(st.one_of(st.binary(max_size=200), _json_values().map(lambda v: json.dumps({"weight_map": v}).encode()),
                 _json_values().map(lambda v: json.dumps(v).encode())))  # fmt: skip
def test_fuzz_index(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "model.safetensors.index.json").write_bytes(raw)
        try:
            find_shards(Path(d))
        except SvdtoolError:
            pass


@pytest.fixture(scope="module")
def valid_gguf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _tiny_gguf(tmp_path_factory.mktemp("gguf") / "t.gguf", "Q8_0").read_bytes()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(data=st.data())
def test_fuzz_gguf_opener(valid_gguf: bytes, data: st.DataObject) -> None:
    blob = data.draw(_mutations(valid_gguf))
    _only_svdtool_error(blob, "model.gguf")
