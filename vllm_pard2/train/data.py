"""Training data: JSONL / Parquet / Arrow files read through Hugging Face ``datasets``.

Record kinds (one record per row):
- ``{"input_ids": [...]}`` or ``{"text": "..."}``: every token is a label; long
  records are cut into ``seq_len`` windows.
- ``{"prompt_ids": [...], "response_ids": [...]}``: labels only on the response
  unless ``loss_on_prompt``; cut to the first ``seq_len`` tokens.
- ``{"messages": [...]}`` or ``{"prompt": "...", "response": "..."}``: rendered
  with the tokenizer's chat template (prompt = user turn, response = assistant
  turn; raw concatenation if the tokenizer has no template); labels on the final
  assistant turn only unless ``loss_on_prompt``.
``streaming`` reads the files lazily (``IterableDataset``) instead of tokenising
them all up front; ``length_buckets`` > 1 groups examples of similar length.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow"}


@dataclass
class Example:
    tokens: torch.Tensor  # [L] long
    loss_mask: torch.Tensor  # [L] bool: token may be a label


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def open_dataset(paths: list[str], streaming: bool = False):
    """One ``datasets`` split per file (all of one format, chosen by extension). Each file
    keeps its own schema: ``datasets`` casts every file of one split to the first file's
    columns, so a corpus of ``input_ids`` and distillation records could not mix."""
    import datasets

    builders = {BUILDERS.get(Path(p).suffix) for p in paths}
    if None in builders or len(builders) != 1:
        raise ValueError(f"data: files must all be one of {', '.join(BUILDERS)}; got {paths}")
    builder = builders.pop()
    return [datasets.load_dataset(builder, data_files=[p], split="train", streaming=streaming) for p in paths]


def iter_records(paths: list[str], streaming: bool = False, seed: int | None = None) -> Iterator[dict]:
    """Every record of the files: file after file, or with ``seed`` (streaming) each file
    shuffled through a 10 000-record buffer and the files taken in turns."""
    datasets = open_dataset(paths, streaming=streaming)
    if seed is None:
        for ds in datasets:
            yield from ds
        return
    iterators = [iter(ds.shuffle(seed=seed, buffer_size=10_000)) for ds in datasets]
    while iterators:
        for it in list(iterators):
            try:
                yield next(it)
            except StopIteration:
                iterators.remove(it)


def chat_ids(tokenizer, messages: list[dict]) -> tuple[list[int], int]:
    """(ids of the whole conversation, index where the final assistant turn starts)."""
    if messages[-1].get("role") != "assistant":
        raise ValueError("messages: the last turn must be the assistant's (it carries the loss)")
    if not getattr(tokenizer, "chat_template", None):
        prefix = _encode(tokenizer, "".join(m["content"] for m in messages[:-1]))
        return prefix + _encode(tokenizer, messages[-1]["content"]), len(prefix)
    full = _encode(tokenizer, tokenizer.apply_chat_template(messages, tokenize=False))
    head = _encode(tokenizer, tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True))
    start = 0  # the longest common prefix: a template may re-tokenise across the boundary
    while start < min(len(full), len(head)) and full[start] == head[start]:
        start += 1
    return full, start


def record_examples(rec: dict, tokenizer, seq_len: int, loss_on_prompt: bool) -> list[Example]:
    """The training examples of one record (several windows for long plain text)."""
    rec = {k: v for k, v in rec.items() if v is not None}  # datasets fills absent columns with None
    if "input_ids" in rec or "text" in rec:
        ids = list(rec["input_ids"]) if "input_ids" in rec else _encode(tokenizer, rec["text"])
        chunks = (ids[start : start + seq_len] for start in range(0, max(len(ids) - 1, 1), seq_len))
        return [Example(torch.tensor(c), torch.ones(len(c), dtype=torch.bool)) for c in chunks if len(c) >= 2]
    if "prompt_ids" in rec and "response_ids" in rec:
        prompt, response = list(rec["prompt_ids"]), list(rec["response_ids"])
        ids, start = prompt + response, len(prompt)
    elif "messages" in rec:
        ids, start = chat_ids(tokenizer, list(rec["messages"]))
    elif "prompt" in rec and "response" in rec:
        messages = [{"role": "user", "content": rec["prompt"]}, {"role": "assistant", "content": rec["response"]}]
        ids, start = chat_ids(tokenizer, messages)
    else:
        raise ValueError(
            "a record needs 'text'/'input_ids', 'prompt_ids'+'response_ids', 'messages' or 'prompt'+'response'"
        )
    mask = ([loss_on_prompt] * start + [True] * (len(ids) - start))[:seq_len]
    ids = ids[:seq_len]
    return [Example(torch.tensor(ids), torch.tensor(mask))] if len(ids) >= 2 and any(mask[1:]) else []


def load_examples(paths: list[str], tokenizer, seq_len: int, loss_on_prompt: bool = False) -> list[Example]:
    examples: list[Example] = []
    for row, rec in enumerate(iter_records(paths)):
        try:
            examples += record_examples(rec, tokenizer, seq_len, loss_on_prompt)
        except ValueError as err:
            raise ValueError(f"{paths}: row {row}: {err}") from None
    if not examples:
        raise ValueError(f"no usable training examples in {paths}")
    return examples


class ExampleStream:
    """Examples read lazily from a streaming dataset in a seeded shuffle-buffer order.

    ``batch(step)`` returns the global batch of a step; steps must come in order,
    and a resumed run fast-forwards by reading (not training on) earlier examples."""

    def __init__(self, paths: list[str], tokenizer, seq_len: int, loss_on_prompt: bool, seed: int, batch_size: int):
        self.args = paths, tokenizer, seq_len, loss_on_prompt
        self.seed, self.batch_size, self.epoch, self.read = seed, batch_size, 0, 0
        self.it = self._examples()

    def _examples(self) -> Iterator[Example]:
        paths, tokenizer, seq_len, loss_on_prompt = self.args
        while True:
            produced = False
            for rec in iter_records(paths, streaming=True, seed=self.seed + self.epoch):
                for ex in record_examples(rec, tokenizer, seq_len, loss_on_prompt):
                    produced = True
                    yield ex
            if not produced:
                raise ValueError(f"no usable training examples in {paths}")
            self.epoch += 1

    def batch(self, step: int) -> list[Example]:
        while self.read < step * self.batch_size:
            next(self.it)
            self.read += 1
        self.read += self.batch_size
        return [next(self.it) for _ in range(self.batch_size)]


def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The example order of one epoch: a pure function of (seed, epoch), so a
    resumed run sees the same batches."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=gen)


def batch_for_step(
    examples: list[Example], batch_size: int, seed: int, step: int, length_buckets: int = 1
) -> list[Example]:
    """The global batch of ``step``: a pure function of (seed, step), so resume needs no data state.

    ``length_buckets`` > 1: the epoch order is cut into groups of that many batches, each
    group sorted by length and split into batches (less padding, same examples per epoch);
    the batches of a group come in a seeded random order."""
    per_epoch = max(len(examples) // batch_size, 1)
    epoch, index = divmod(step, per_epoch)
    order = epoch_order(len(examples), seed, epoch)
    if length_buckets > 1:
        group, within = divmod(index, length_buckets)
        members = order[group * length_buckets * batch_size : (group + 1) * length_buckets * batch_size]
        lengths = torch.tensor([examples[int(i)].tokens.numel() for i in members])
        members = members[torch.argsort(lengths, stable=True)]
        gen = torch.Generator().manual_seed(seed * 7_000_003 + epoch * 1009 + group)
        batches = torch.randperm(max(len(members) // batch_size, 1), generator=gen)
        index, order = int(batches[within % len(batches)]), members
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
