"""Shared fixtures: tiny seeded Llama-, GPT-2- and BERT-shaped checkpoints, and the packaged real ones."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Keep the user's real caches out of the tests, and make runs deterministic.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Without a GPU, Triton kernels (svdtool.linalg.bulge) run in Triton's interpreter, so CI checks their code too.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _tiny_config(kind: str):  # type: ignore[no-untyped-def]
    import transformers as tf

    if kind == "llama":
        return tf.LlamaConfig(
            vocab_size=96,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=False,
        )
    if kind == "gpt2":
        return tf.GPT2Config(
            vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
        )
    if kind == "bert":
        return tf.BertConfig(
            vocab_size=96,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
        )
    raise ValueError(kind)


def build_tiny_model(kind: str, seed: int = 0):  # type: ignore[no-untyped-def]
    """A randomly initialised transformers model of the given family, seeded."""
    import transformers as tf

    torch.manual_seed(seed)
    config = _tiny_config(kind)
    cls = {"llama": tf.LlamaForCausalLM, "gpt2": tf.GPT2LMHeadModel, "bert": tf.BertModel}[kind]
    model = cls(config)
    model.eval()
    return model


def save_tiny(model, path: Path, sharded: bool, dtype: torch.dtype = torch.float32) -> Path:  # type: ignore[no-untyped-def]
    model = model.to(dtype)
    kwargs = {"max_shard_size": "20KB"} if sharded else {}
    model.save_pretrained(str(path), safe_serialization=True, **kwargs)
    return path


@pytest.fixture(scope="session", params=["llama", "gpt2", "bert"])
def tiny_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, bool], Path]:
    """(kind, sharded) -> a saved fp32 checkpoint folder, for llama/gpt2/bert, single-file and sharded."""
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for kind in ("llama", "gpt2", "bert"):
        for sharded in (False, True):
            out[(kind, sharded)] = save_tiny(
                build_tiny_model(kind), root / f"{kind}-{'sharded' if sharded else 'single'}", sharded
            )
    return out


@pytest.fixture(scope="session")
def tiny_llama(tiny_checkpoints: dict[tuple[str, bool], Path]) -> Path:
    return tiny_checkpoints[("llama", False)]


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as an HF folder (converted once from the packaged GGUF)."""
    from svdtool.errors import SvdtoolError
    from svdtool.loading.packaged import packaged_model

    try:
        return packaged_model("smollm2")
    except SvdtoolError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from svdtool.errors import SvdtoolError
    from svdtool.loading.packaged import packaged_model

    try:
        return packaged_model("minilm")
    except SvdtoolError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tiny_spectrum_dir(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``svdtool spectrum`` results (spectrum.json + spectra.safetensors) of the tiny Llama, ranks 2,4,8."""
    from svdtool.commands.spectrum import SpectrumRequest, run_spectrum, write_spectrum

    out = tmp_path_factory.mktemp("spectrum") / "tiny-spectrum"
    request = SpectrumRequest(
        model=str(tiny_llama),
        device="cpu",
        ranks=[2, 4, 8],
        command=["svdtool", "spectrum", "tiny", "--ranks", "2,4,8"],
    )
    write_spectrum(run_spectrum(request), out)
    return out


@pytest.fixture
def fake_hub():  # type: ignore[no-untyped-def]
    """A loopback fake of the Hugging Face Hub (tests/fake_hub.py), shut down after the test.

    Serve repos with ``fake_hub.add_repo(repo_id, folder, repo_type=..., gated_token=..., revisions=...)``;
    run clients in a subprocess with ``env=fake_hub.env(tmp_path / "hf_home", token=None)``.
    """
    from tests.fake_hub import FakeHub

    hub = FakeHub()
    try:
        yield hub
    finally:
        hub.close()


# ---------------------------------------------------------------- LoRA-GA: tokenizer-carrying models, calibration
@pytest.fixture(scope="session")
def lora_ga_tiny(tiny_checkpoints: dict[tuple[str, bool], Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny llama / gpt2 folders with a word-level tokenizer, and calibration files (tests/lora_ga_support.py)."""
    from tests.lora_ga_support import model_with_tokenizer, qa_records, text_records, write_jsonl

    root = tmp_path_factory.mktemp("lora_ga")
    return {
        "llama": model_with_tokenizer(tiny_checkpoints[("llama", False)], root / "llama"),
        "llama_plain": model_with_tokenizer(tiny_checkpoints[("llama", False)], root / "llama_plain", chat=False),
        "gpt2": model_with_tokenizer(tiny_checkpoints[("gpt2", False)], root / "gpt2"),
        "bert": model_with_tokenizer(tiny_checkpoints[("bert", False)], root / "bert"),
        "qa": write_jsonl(root / "qa.jsonl", qa_records(40)),
        "text": write_jsonl(root / "text.jsonl", text_records(40)),
    }


@pytest.fixture(scope="session")
def smollm2_lora_ga(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Real SmolLM2-135M gradients on a small natural-text calibration set: an exact --grad-cache file and the
    matching sketch factors. Shared by the gradient, coverage and LoRA-GA tests (a few CPU passes in all)."""
    from tests.lora_ga_support import smollm2_calibration, smollm2_request

    root = tmp_path_factory.mktemp("smollm2_lora_ga")
    calib = smollm2_calibration(root / "docs.jsonl")
    return smollm2_request(smollm2_dir, calib, root)


@pytest.fixture
def eager_bitsandbytes() -> Iterator[None]:
    """torch.compile off for the test (bitsandbytes compiles its CPU dequantisation once per shape, seconds each).

    Through torch's own config patch: pytest ≥ 9.2's monkeypatch cannot restore a config-module attribute
    (it deletes it on undo, and every later test then fails to set it).
    """
    with torch._dynamo.config.patch(disable=True):
        yield
