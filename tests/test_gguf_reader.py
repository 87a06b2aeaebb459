"""The GGUF reader: header-only open (fast with a large vocabulary in the metadata), and the σ of every
tensor type it reads against gguf's own reader and dequantize."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg as sl

from svdtool.commands.spectrum import SpectrumRequest, run_spectrum
from svdtool.errors import SvdtoolError
from svdtool.loading import open_checkpoint
from tests.gguf_support import write_gguf
from tests.helpers import assert_close

TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K")


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "types.gguf"
    tensors = {f"blk.0.{t.lower()}.weight": ((48, 512), t) for t in TYPES}
    tensors["token_embd.weight"] = ((1000, 256), "Q6_K")
    write_gguf(path, tensors, vocab_tokens=50_000)
    return path


def test_every_type_matches_gguf_dequantize(gguf_file: Path) -> None:
    import gguf
    from gguf import quants

    reader = gguf.GGUFReader(str(gguf_file))
    expected = {
        t.name: quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
        for t in reader.tensors
    }
    with open_checkpoint(str(gguf_file)) as ckpt:
        infos = {i.name: i for i in ckpt.tensors()}
        assert {i.dtype for i in infos.values()} == {"fp32", "fp16"} | {f"gguf_{t.lower()}" for t in TYPES[2:]}
        for name, want in expected.items():
            got = ckpt.read(infos[name]).numpy()
            assert got.dtype == np.float32 and np.array_equal(got, want), name
    run = run_spectrum(SpectrumRequest(str(gguf_file), device="cpu"))
    assert set(run.sigmas) == set(expected)
    for name, want in expected.items():
        assert_close(run.sigmas[name], sl.svdvals(want.astype(np.float64)), "sigma", name)


def test_open_reads_only_the_header(gguf_file: Path) -> None:
    # gguf.GGUFReader builds a numpy view per token string (tens of seconds for a 262144-token vocabulary);
    # svdtool skips metadata arrays. 50,000 tokens: well under a second even on a loaded 2-core machine.
    t0 = time.perf_counter()
    with open_checkpoint(str(gguf_file)) as ckpt:
        assert len(ckpt.tensors()) == len(TYPES) + 1 and ckpt.meta.config == {"model_type": "llama"}
    assert time.perf_counter() - t0 < 2.0


def test_truncated_file_is_one_line_error(gguf_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(gguf_file.read_bytes()[:4096])
    with pytest.raises(SvdtoolError, match="not a readable GGUF file"):
        open_checkpoint(str(bad))


def _one_tensor_gguf(path: Path, dims: list[int], ggml_type: int, data: bytes) -> Path:
    """A hand-made GGUF v3: no metadata, one tensor ``t`` at offset 0 of the data section (alignment 32)."""
    import struct

    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 0)
    head += struct.pack("<Q", 1) + b"t" + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
    head += struct.pack("<IQ", ggml_type, 0)
    path.write_bytes(head + b"\0" * (-len(head) % 32) + data)
    return path


@pytest.mark.parametrize(
    ("dims", "ggml_type", "message"),
    [
        ([0, 2**63 + 5], 0, "impossible shape"),  # F32: zero elements, but no library can hold the shape
        ([2**40, 2**40], 0, "impossible shape"),
        ([33, 1], 8, "whole number of 32-blocks"),  # Q8_0 rows are blocks of 32
    ],
)
def test_impossible_shapes_are_one_line_errors(tmp_path: Path, dims: list[int], ggml_type: int, message: str) -> None:
    bad = _one_tensor_gguf(tmp_path / "bad.gguf", dims, ggml_type, b"\0" * 4096)
    with pytest.raises(SvdtoolError, match=message):
        open_checkpoint(str(bad))
