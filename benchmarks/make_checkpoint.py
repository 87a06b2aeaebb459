"""Write a Llama-shaped checkpoint of random weights as a sharded HF folder, for benchmarks.

    python benchmarks/make_checkpoint.py /tmp/llama7b            # Llama-2-7B shapes, bf16 (~13.5 GB)
    python benchmarks/make_checkpoint.py /tmp/tiny --small       # tiny shapes, for a CPU smoke test
    python benchmarks/make_checkpoint.py /tmp/llama7b --tokenizer TOKDIR   # with a real tokenizer (vocab from it)

Weights are N(0, 0.02²) like a fresh Llama init, generated on the GPU when there is one. Shards are
written one at a time (≈ 4 GB each), so host memory stays near one shard.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

LLAMA2_7B = dict(layers=32, hidden=4096, intermediate=11008, vocab=32000, heads=32, kv_heads=32)
SMALL = dict(layers=2, hidden=128, intermediate=344, vocab=512, heads=4, kv_heads=4)


def _tensors_of_layer(i: int, hidden: int, intermediate: int, kv_dim: int) -> dict[str, tuple[int, ...]]:
    p = f"model.layers.{i}."
    return {
        p + "input_layernorm.weight": (hidden,),
        p + "self_attn.q_proj.weight": (hidden, hidden),
        p + "self_attn.k_proj.weight": (kv_dim, hidden),
        p + "self_attn.v_proj.weight": (kv_dim, hidden),
        p + "self_attn.o_proj.weight": (hidden, hidden),
        p + "post_attention_layernorm.weight": (hidden,),
        p + "mlp.gate_proj.weight": (intermediate, hidden),
        p + "mlp.up_proj.weight": (intermediate, hidden),
        p + "mlp.down_proj.weight": (hidden, intermediate),
    }


def make_llama_checkpoint(
    path: str | Path,
    *,
    layers: int = 32,
    hidden: int = 4096,
    intermediate: int = 11008,
    vocab: int = 32000,
    heads: int = 32,
    kv_heads: int = 32,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    device: str | None = None,
    shard_bytes: int = 4 << 30,
    tokenizer: str | Path | None = None,
) -> Path:
    """Write config.json, model-0000k-of-0000n.safetensors and the index. Returns the folder.

    With ``tokenizer`` (a folder holding a tokenizer), its files are copied in and the vocabulary size and
    special token ids come from it, so the folder runs end to end like a real model.
    """
    path = Path(path)
    if (path / "model.safetensors.index.json").is_file():
        return path  # already there: reuse
    path.mkdir(parents=True, exist_ok=True)
    special = {"bos_token_id": 1, "eos_token_id": 2}
    if tokenizer is not None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tokenizer))
        tok.save_pretrained(str(path))
        vocab = len(tok)
        special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    gen = torch.Generator(device=device).manual_seed(seed)
    kv_dim = hidden // heads * kv_heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        shapes.update(_tensors_of_layer(i, hidden, intermediate, kv_dim))
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    itemsize = torch.empty((), dtype=dtype).element_size()
    # Group tensors into shards of about shard_bytes, in order.
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        nbytes = itemsize * int(torch.tensor(shape).prod())
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    weight_map, total = {}, 0
    for k, names in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name in names:
            shape = shapes[name]
            if len(shape) == 1:
                t = torch.ones(shape, dtype=dtype)
            else:
                t = (torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * 0.02).to(dtype).cpu()
            tensors[name] = t
            weight_map[name] = fname
            total += t.numel() * itemsize
        save_file(tensors, str(path / fname), metadata={"format": "pt"})
        del tensors
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        **special,
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path")
    ap.add_argument("--small", action="store_true", help="tiny shapes for a CPU smoke test")
    ap.add_argument("--layers", type=int)
    ap.add_argument("--tokenizer", help="a folder with a tokenizer to copy in (sets the vocabulary size)")
    args = ap.parse_args()
    dims = dict(SMALL if args.small else LLAMA2_7B)
    if args.layers:
        dims["layers"] = args.layers
    t0 = time.perf_counter()
    out = make_llama_checkpoint(args.path, tokenizer=args.tokenizer, **dims)  # type: ignore[arg-type]
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
