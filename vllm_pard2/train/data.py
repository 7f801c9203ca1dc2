"""JSONL training data: plain text, or a prompt plus the target's response.

Record kinds (one JSON object per line):
- ``{"input_ids": [...]}`` or ``{"text": "..."}``: every token is a label; long
  records are cut into ``seq_len`` windows.
- ``{"prompt_ids": [...], "response_ids": [...]}`` or ``{"prompt": "...",
  "response": "..."}``: labels only on the response (the final assistant turn)
  unless ``loss_on_prompt``; cut to the first ``seq_len`` tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Example:
    tokens: torch.Tensor  # [L] long
    loss_mask: torch.Tensor  # [L] bool: token may be a label


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def load_examples(paths: list[str], tokenizer, seq_len: int, loss_on_prompt: bool = False) -> list[Example]:
    examples: list[Example] = []
    for path in paths:
        with Path(path).open(encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                rec = json.loads(line)
                if "input_ids" in rec or "text" in rec:
                    ids = rec["input_ids"] if "input_ids" in rec else _encode(tokenizer, rec["text"])
                    for start in range(0, max(len(ids) - 1, 1), seq_len):
                        chunk = ids[start : start + seq_len]
                        if len(chunk) >= 2:
                            examples.append(Example(torch.tensor(chunk), torch.ones(len(chunk), dtype=torch.bool)))
                elif ("prompt_ids" in rec or "prompt" in rec) and ("response_ids" in rec or "response" in rec):
                    prompt = rec["prompt_ids"] if "prompt_ids" in rec else _encode(tokenizer, rec["prompt"])
                    response = rec["response_ids"] if "response_ids" in rec else _encode(tokenizer, rec["response"])
                    ids = (prompt + response)[:seq_len]
                    mask = ([loss_on_prompt] * len(prompt) + [True] * len(response))[:seq_len]
                    if len(ids) >= 2 and any(mask[1:]):
                        examples.append(Example(torch.tensor(ids), torch.tensor(mask)))
                else:
                    raise ValueError(
                        f"{path}:{line_no}: a record needs 'text'/'input_ids' or 'prompt(_ids)' + 'response(_ids)'"
                    )
    if not examples:
        raise ValueError(f"no usable training examples in {paths}")
    return examples


def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The example order of one epoch: a pure function of (seed, epoch), so a
    resumed run sees the same batches."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=gen)


def batch_for_step(examples: list[Example], batch_size: int, seed: int, step: int) -> list[Example]:
    per_epoch = max(len(examples) // batch_size, 1)
    epoch, index = divmod(step, per_epoch)
    order = epoch_order(len(examples), seed, epoch)
    picks = order[index * batch_size : (index + 1) * batch_size]
    return [examples[int(i)] for i in picks]


def pad_batch(batch: list[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens [B, L], loss_mask [B, L], lengths [B]) right-padded with ``pad_id``."""
    longest = max(ex.tokens.numel() for ex in batch)
    tokens = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((len(batch), longest), dtype=torch.bool)
    for i, ex in enumerate(batch):
        tokens[i, : ex.tokens.numel()] = ex.tokens
        loss_mask[i, : ex.tokens.numel()] = ex.loss_mask
    lengths = torch.tensor([ex.tokens.numel() for ex in batch])
    return tokens, loss_mask, lengths
