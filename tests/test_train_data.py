"""Training data through Hugging Face ``datasets``: formats, chat template, streaming, length buckets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vllm_pard2.train.data import Example, ExampleStream, batch_for_step, load_examples, record_examples

TOKENIZER = Path(__file__).resolve().parent.parent / "vllm_pard2" / "assets" / "tiny_pard2" / "target"
RECORDS = [
    {"text": "def add(a, b):\n    return a + b\n" * (1 + i % 3)}
    if i % 2
    else {"prompt_ids": [5, 6, 7], "response_ids": list(range(10, 14 + i))}
    for i in range(12)
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER)


def same_examples(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.tokens, y.tokens) and torch.equal(x.loss_mask, y.loss_mask) for x, y in zip(a, b, strict=True)
    )


def test_jsonl_parquet_and_arrow_give_the_same_examples(tokenizer, tmp_path):
    import datasets

    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    ds = datasets.Dataset.from_list(
        [{"text": r.get("text"), **{k: r.get(k) for k in ("prompt_ids", "response_ids")}} for r in RECORDS]
    )
    ds.to_parquet(str(tmp_path / "d.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    reference = load_examples([str(jsonl)], tokenizer, seq_len=16)
    assert len(reference) > len(RECORDS)  # long texts are cut into windows
    for path in (tmp_path / "d.parquet", arrow):
        assert same_examples(load_examples([str(path)], tokenizer, seq_len=16), reference), path.suffix


def test_chat_records_put_the_loss_on_the_final_assistant_turn(tokenizer):
    messages = [
        {"role": "user", "content": "def f(x):"},
        {"role": "assistant", "content": "pass"},
        {"role": "user", "content": "and g?"},
        {"role": "assistant", "content": "return x + 1"},
    ]
    (ex,) = record_examples({"messages": messages}, tokenizer, seq_len=256, loss_on_prompt=False)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(ex.tokens) == rendered
    labelled = tokenizer.decode(ex.tokens[ex.loss_mask])
    assert labelled.startswith("return x + 1") and "pass" not in labelled
    (pr,) = record_examples({"prompt": "def f(x):", "response": "pass"}, tokenizer, 256, False)
    assert tokenizer.decode(pr.tokens[pr.loss_mask]).startswith("pass")
    with pytest.raises(ValueError, match="last turn"):
        record_examples({"messages": messages[:-1]}, tokenizer, 256, False)


def test_streaming_resumes_at_the_same_batch(tokenizer, tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    running = ExampleStream([str(jsonl)], tokenizer, 16, False, seed=3, batch_size=4)
    batches = [running.batch(step) for step in range(6)]  # crosses an epoch boundary
    resumed = ExampleStream([str(jsonl)], tokenizer, 16, False, seed=3, batch_size=4)
    assert same_examples(resumed.batch(4), batches[4]) and same_examples(resumed.batch(5), batches[5])


def test_length_buckets_cover_the_epoch_with_less_padding():
    gen = torch.Generator().manual_seed(0)
    examples = [
        Example(torch.arange(n), torch.ones(n, dtype=torch.bool))
        for n in torch.randint(2, 64, (64,), generator=gen).tolist()
    ]
    per_epoch = 64 // 4

    def epoch(buckets: int) -> list[list]:
        return [batch_for_step(examples, 4, seed=1, step=s, length_buckets=buckets) for s in range(per_epoch)]

    def padding(batches) -> int:
        return sum(max(e.tokens.numel() for e in b) * len(b) - sum(e.tokens.numel() for e in b) for b in batches)

    plain, bucketed = epoch(1), epoch(8)
    assert sorted(id(e) for b in bucketed for e in b) == sorted(id(e) for e in examples)
    assert padding(bucketed) < padding(plain) / 2


def test_files_of_different_record_kinds_mix(tokenizer, tmp_path):
    """A token corpus and distillation records (other columns) train together, eagerly
    and streamed: ``datasets`` alone would cast the second file to the first's schema."""
    corpus, distill = tmp_path / "corpus.jsonl", tmp_path / "distill.jsonl"
    corpus.write_text("".join(json.dumps({"input_ids": list(range(5, 25 + i))}) + "\n" for i in range(4)))
    distill.write_text(
        "".join(
            json.dumps({"index": i, "prompt": "x", "response": "y", "prompt_ids": [5, 6], "response_ids": [7, 8, 9]})
            + "\n"
            for i in range(4)
        )
    )
    paths = [str(corpus), str(distill)]
    examples = load_examples(paths, tokenizer, seq_len=64)
    assert [ex.tokens.numel() for ex in examples] == [20, 21, 22, 23, 5, 5, 5, 5]
    stream = ExampleStream(paths, tokenizer, 64, loss_on_prompt=False, seed=0, batch_size=8)
    streamed = stream.batch(0)
    assert sorted(ex.tokens.numel() for ex in streamed) == [5, 5, 5, 5, 20, 21, 22, 23]
