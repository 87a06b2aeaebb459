"""GGUF open and spectrum time: svdtool's reader against gguf.GGUFReader, and GGUF against safetensors.

    python benchmarks/bench_gguf.py /tmp/gguf-bench            # writes the files once, then measures
    python benchmarks/bench_gguf.py /tmp/gguf-bench --layers 2 # fewer blocks: the embedding dominates anyway

The synthetic GGUF has Gemma-3-270M's slow shapes: a 262144 × 640 Q6_K token embedding and a
262144-token vocabulary in the metadata, and blocks of hidden 640 with Q4_K, Q5_0, Q6_K and Q8_0 weights
(tests/gguf_support.py writes it). The same weights, dequantized by gguf, are saved as an fp32
safetensors folder, so the two spectrum runs decompose identical matrices. The packaged SmolLM2 GGUF
(Q4_1, 49152 tokens) is measured too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.gguf_support import write_gguf  # noqa: E402

HIDDEN, FFN, VOCAB = 640, 2048, 262144
LAYER = {  # name → (shape (out, in), type): q 4 heads × 256, k/v 1 head × 256, as in Gemma-3-270M
    "attn_q": ((1024, HIDDEN), "Q4_K"),
    "attn_k": ((256, HIDDEN), "Q5_0"),
    "attn_v": ((256, HIDDEN), "Q8_0"),
    "attn_output": ((HIDDEN, 1024), "Q6_K"),
    "ffn_gate": ((FFN, HIDDEN), "Q4_K"),
    "ffn_up": ((FFN, HIDDEN), "Q5_0"),
    "ffn_down": ((HIDDEN, FFN), "Q8_0"),
}


def make_files(root: Path, layers: int) -> tuple[Path, Path]:
    import gguf
    import torch
    from gguf import quants
    from safetensors.torch import save_file

    path, folder = root / "bench.gguf", root / "safetensors"
    if not path.exists():
        tensors = {"token_embd.weight": ((VOCAB, HIDDEN), "Q6_K")}
        for i in range(layers):
            tensors |= {f"blk.{i}.{k}.weight": v for k, v in LAYER.items()}
        write_gguf(path, tensors, vocab_tokens=VOCAB)
    if not folder.exists():
        folder.mkdir(parents=True)
        reader = gguf.GGUFReader(str(path))
        weights = {}
        for t in reader.tensors:
            shape = tuple(reversed(t.shape.tolist()))
            weights[t.name] = torch.from_numpy(quants.dequantize(t.data, t.tensor_type).reshape(shape))
        save_file(weights, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    return path, folder


def timed(fn) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--skip-gguf-reader", action="store_true", help="do not time gguf.GGUFReader (slow)")
    args = parser.parse_args()
    import gguf

    from svdtool.commands.spectrum import SpectrumRequest, run_spectrum
    from svdtool.loading import open_checkpoint
    from svdtool.loading.packaged import packaged_source

    args.root.mkdir(parents=True, exist_ok=True)
    path, folder = make_files(args.root, args.layers)
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs")
    for label, file in (("SmolLM2 Q4_1 GGUF", packaged_source("smollm2")), ("synthetic 262144x640 GGUF", path)):
        t_open, ckpt = timed(lambda f=file: open_checkpoint(str(f)))
        ckpt.close()  # type: ignore[attr-defined]
        line = f"{label}: svdtool open {t_open:.3f} s"
        if not args.skip_gguf_reader:
            t_reader, _ = timed(lambda f=file: gguf.GGUFReader(str(f)))
            line += f", gguf.GGUFReader {t_reader:.2f} s"
        print(line, flush=True)
    request = SpectrumRequest(model=str(path), device="cpu")
    t_gguf, run_g = timed(lambda: run_spectrum(request))
    t_st, run_s = timed(lambda: run_spectrum(SpectrumRequest(model=str(folder), device="cpu")))
    for label, t, run in (("GGUF", t_gguf, run_g), ("safetensors", t_st, run_s)):
        timings = run.result.manifest.timings  # type: ignore[attr-defined]
        print(f"spectrum of the {label}: {t:.1f} s wall ({', '.join(f'{k} {v:.2f}' for k, v in timings.items())})")
    print(f"ratio GGUF / safetensors: {t_gguf / t_st:.2f}")


if __name__ == "__main__":
    main()
