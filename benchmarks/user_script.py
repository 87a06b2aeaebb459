"""What the PEFT user scripts of the benchmarks share: a phase timer and svdtool's plain-text batches."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch


class Laps:
    """Seconds per phase, each ended by ``lap(name)`` after the device has finished its work."""

    def __init__(self, device: torch.device, since: float) -> None:
        self.device = device
        self.phases: dict[str, float] = {"imports": round(time.perf_counter() - since, 3)}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.phases[name] = round(now - self._t, 3)
        self._t = now


def token_ids(tok: object, calib: str, samples: int, max_length: int) -> list[list[int]]:
    """svdtool's sequences for plain text: the first ``samples`` records' ids with special tokens, cut."""
    texts = [json.loads(line)["text"] for line in Path(calib).read_text().splitlines() if line.strip()]
    return [tok(x, add_special_tokens=True)["input_ids"][:max_length] for x in texts[:samples]]  # type: ignore[operator]


def pad_batches(seqs: list[list[int]], batch_size: int, pad: int) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches in order, with attention mask and labels (−100 on pads), as svdtool's collate."""
    out = []
    for i in range(0, len(seqs), batch_size):
        part = seqs[i : i + batch_size]
        width = max(len(s) for s in part)
        ids = torch.full((len(part), width), pad)
        mask = torch.zeros((len(part), width), dtype=torch.long)
        for j, s in enumerate(part):
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
        out.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return out
