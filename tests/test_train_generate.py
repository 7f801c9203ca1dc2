"""``vllm_pard2.train.generate`` resumes an interrupted prompt file (one engine start)."""

from __future__ import annotations

import json

from test_train_smoke import MAX_TOKENS, hf_greedy

from vllm_pard2.train.generate import generate


def test_generate_resumes_after_the_last_complete_record(tiny_pair, tmp_path):
    prompts = [[20 + i, 40 + 3 * i, 77, 90 + i, 5 + i] for i in range(5)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt_ids": p}) + "\n" for p in prompts))
    expected = hf_greedy(tiny_pair["target"], prompts)
    out = tmp_path / "distill.jsonl"
    # an interrupted earlier run: one complete record and a torn second line
    first = {"index": 0, "prompt_ids": prompts[0], "response_ids": expected[0], "prompt": "", "response": ""}
    out.write_text(json.dumps(first) + "\n" + '{"index": 1, "prompt_i')
    summary = generate(str(tiny_pair["target"]), str(tmp_path / "prompts.jsonl"), str(out), MAX_TOKENS, chunk=2)
    assert summary["resumed_at"] == 1 and summary["prompts"] == 5
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(5))
    for record, prompt, greedy in zip(records, prompts, expected, strict=True):
        assert record["prompt_ids"] == prompt
        assert record["response_ids"] == greedy[: len(record["response_ids"])]
    again = generate(str(tiny_pair["target"]), str(tmp_path / "prompts.jsonl"), str(out), MAX_TOKENS, chunk=2)
    assert again["resumed_at"] == 5 and again["response_tokens"] == 0
