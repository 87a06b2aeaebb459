"""Tokenize calibration examples the way the LoRA-GA reference does, and pad them into batches.

* Plain text: every token is a target (``labels = input_ids``).
* Prompt/response with a chat template: the prompt is the user message and the response the assistant
  message; the tokens of ``apply_chat_template(user, add_generation_prompt=True)`` are masked.
* Prompt/response without a chat template: ``prompt + " " + response + eos`` as in the reference
  (``examples/utils.py::causalLMEncode``), with the tokens of the prompt alone masked.

Masked labels are -100, as in transformers. Sequences longer than ``max_length`` are cut to it; an example
left with no target token after the shift (the first token is never predicted) is dropped and counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from svdtool.calibration.examples import Example
from svdtool.errors import SvdtoolError

if TYPE_CHECKING:
    import torch

IGNORE = -100


@dataclass
class Encoded:
    index: int  # record number in the file
    input_ids: list[int]
    labels: list[int]  # IGNORE where masked

    @property
    def loss_tokens(self) -> int:
        """Targets that count after the causal shift (position 0 is never predicted)."""
        return sum(1 for t in self.labels[1:] if t != IGNORE)


@dataclass
class EncodeStats:
    chat_template: bool
    truncated: int = 0
    dropped: int = 0


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def encode_example(ex: Example, tokenizer: Any, chat: bool) -> tuple[list[int], int]:
    """(input_ids, number of leading masked tokens) of one example, before truncation."""
    if ex.text is not None:
        return _ids(tokenizer, ex.text, True), 0
    assert ex.prompt is not None and ex.response is not None
    if chat:
        user = [{"role": "user", "content": ex.prompt}]
        prompt_text = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full_text = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": ex.response}], tokenize=False
        )
        # The template already holds the special tokens it wants (BOS, turn markers).
        prompt_ids = _ids(tokenizer, prompt_text, False)
        ids = _ids(tokenizer, full_text, False)
        return ids, _common_prefix(prompt_ids, ids)
    eos = tokenizer.eos_token or ""
    prompt = ex.plain_prompt if ex.plain_prompt is not None else ex.prompt
    ids = _ids(tokenizer, f"{prompt} {ex.response}{eos}", True)
    n_prompt = len(_ids(tokenizer, prompt, True))
    return ids, min(n_prompt, len(ids))


def encode_examples(
    examples: list[Example], tokenizer: Any, max_length: int, chat_template: bool | None = None
) -> tuple[list[Encoded], EncodeStats]:
    """Tokenize, mask and truncate every example. ``chat_template=None`` uses one when the tokenizer has it."""
    if max_length < 2:
        raise SvdtoolError(f"--max-length {max_length}: need at least 2 tokens")
    available = has_chat_template(tokenizer)
    if chat_template and not available:
        raise SvdtoolError("--chat-template was asked for but the tokenizer has no chat template")
    chat = available if chat_template is None else chat_template
    stats = EncodeStats(chat_template=chat and any(e.text is None for e in examples))
    out: list[Encoded] = []
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "sequence longer than model_max_length": we truncate ourselves
    try:
        # Plain texts in one call: a fast tokenizer encodes a list on all cores (the same ids as one by one).
        plain = [k for k, ex in enumerate(examples) if ex.text is not None]
        batch = tokenizer([examples[k].text for k in plain], add_special_tokens=True)["input_ids"] if plain else []
        ready = {k: list(ids) for k, ids in zip(plain, batch, strict=True)}
        for k, ex in enumerate(examples):
            ids, n_masked = (ready.pop(k), 0) if k in ready else encode_example(ex, tokenizer, chat)
            if len(ids) > max_length:
                ids = ids[:max_length]
                stats.truncated += 1
            n_masked = min(n_masked, len(ids))
            enc = Encoded(ex.index, ids, [IGNORE] * n_masked + ids[n_masked:])
            if enc.loss_tokens == 0:
                stats.dropped += 1
                continue
            out.append(enc)
    finally:
        hf_logging.set_verbosity(verbosity)
    if not out:
        raise SvdtoolError(
            f"none of the {len(examples)} samples has a target token within --max-length {max_length} "
            "(the prompts fill the whole window): raise --max-length"
        )
    return out, stats


def pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def collate(items: list[Encoded], pad: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (pads are IGNORE) for one batch.

    The width is the longest item's, rounded up to ``multiple`` (fewer distinct shapes for CUDA graphs).
    """
    import torch

    width = max(len(e.input_ids) for e in items)
    width = -(-width // multiple) * multiple
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    for i, e in enumerate(items):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(e.labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batches(items: list[Encoded], batch_size: int) -> Iterator[list[Encoded]]:
    """Consecutive batches of ``batch_size`` (the last may be smaller), as the reference iterates."""
    if batch_size < 1:
        raise SvdtoolError(f"--batch-size {batch_size}: need at least 1")
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]
