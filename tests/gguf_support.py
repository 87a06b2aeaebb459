"""GGUF files written with the ``gguf`` package, for the reader's tests and benchmarks/bench_gguf.py.

Q4_0/Q4_1/Q5_0/Q8_0 are quantized from seeded Gaussian weights with gguf's own quantizers. gguf has no
Python quantizer for the K-quants, so Q4_K and Q6_K blocks are seeded random bytes with their float16
scale fields set to small finite values: every such block is a valid encoding of some weights, which is
all a reader test needs (its σ are checked against gguf's own dequantize of the same bytes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Byte offsets of the float16 scale fields inside one block of the K-quants written here.
_K_SCALES = {"Q4_K": (0, 2), "Q6_K": (208,)}


def quantized_bytes(shape: tuple[int, int], qtype_name: str, rng: np.random.Generator) -> np.ndarray:
    """(rows, bytes per row) uint8 data of a (rows, cols) weight in ``qtype_name``."""
    from gguf import GGMLQuantizationType, quants
    from gguf.constants import GGML_QUANT_SIZES

    qtype = GGMLQuantizationType[qtype_name]
    if qtype_name in _K_SCALES:
        block, size = GGML_QUANT_SIZES[qtype]
        data = rng.integers(0, 256, (shape[0], shape[1] // block, size), dtype=np.uint8)
        for off in _K_SCALES[qtype_name]:
            scale = np.array([rng.uniform(2e-4, 2e-3)], dtype=np.float16).view(np.uint8)
            data[:, :, off : off + 2] = scale
        return data.reshape(shape[0], -1)
    return quants.quantize((0.02 * rng.standard_normal(shape)).astype(np.float32), qtype)


def write_gguf(path: Path, tensors: dict[str, tuple[tuple[int, int], str]], vocab_tokens: int, seed: int = 0) -> None:
    """A Llama-architecture GGUF with ``tensors`` (name → ((rows, cols), type name)) and a tokenizer of
    ``vocab_tokens`` strings, scores and types in its metadata (the part gguf.GGUFReader is slow on)."""
    import gguf

    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_block_count(1)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"tok{i}" for i in range(vocab_tokens)])
    writer.add_token_scores([0.0] * vocab_tokens)
    writer.add_token_types([1] * vocab_tokens)
    for name, (shape, qtype_name) in tensors.items():
        if qtype_name in ("F32", "F16"):
            dtype = np.float32 if qtype_name == "F32" else np.float16
            writer.add_tensor(name, (0.02 * rng.standard_normal(shape)).astype(dtype))
        else:
            data = quantized_bytes(shape, qtype_name, rng)
            writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType[qtype_name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
