"""Benchmark prompts (HumanEval, GSM8K, MT-Bench, MATH-500) and how they become model input.

Every data file lives in ``benchmarks/data`` with its SOURCE.md (origin,
commit, licence, sha256); nothing is read from outside the package at run
time. A benchmark item is a :class:`Conversation`: one or more user turns.
MT-Bench has two; its second turn is asked after the model's own first
answer, so conversations are rendered turn by turn with the answers so far.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
BENCHMARKS = ("humaneval", "gsm8k", "mt_bench", "math_500")
SUBSETS = ("pard", "full")
ALIASES = {
    "humaneval": "humaneval",
    "human_eval": "humaneval",
    "gsm8k": "gsm8k",
    "mt_bench": "mt_bench",
    "mtbench": "mt_bench",
    "mt-bench": "mt_bench",
    "math_500": "math_500",
    "math500": "math_500",
    "math-500": "math_500",
    "math": "math_500",
}
# PARD's HumanEval prompts are this sentence glued to the HumanEval prompt; the
# full set is rendered the same way so both subsets read alike.
HUMANEVAL_PREFIX = "Complete the code I provided."


@dataclass(frozen=True)
class Conversation:
    """One benchmark item: its id and the user turns, asked in order."""

    item_id: str
    turns: tuple[str, ...]


def canonical_name(name: str) -> str:
    """The benchmark's canonical name; ValueError listing the valid ones."""
    key = name.strip().lower()
    if key not in ALIASES:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    return ALIASES[key]


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _single_turn(prefix: str, texts: list[str]) -> list[Conversation]:
    return [Conversation(f"{prefix}/{i}", (text,)) for i, text in enumerate(texts)]


def load_benchmark(name: str, subset: str = "pard", num_prompts: int | None = None) -> list[Conversation]:
    """Conversations of one benchmark.

    ``subset="pard"``: the prompt subsets PARD/PARD-2 report on (80 HumanEval,
    80 GSM8K, 20 MATH-500; MT-Bench has no PARD file, so all 80).
    ``subset="full"``: 164 HumanEval, 1319 GSM8K test, 500 MATH-500, 80 MT-Bench.
    ``num_prompts`` keeps the first N (PARD's scripts take the first N too).
    """
    name = canonical_name(name)
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}; choose from {', '.join(SUBSETS)}")
    if name == "mt_bench":
        items = [
            Conversation(f"mt_bench/{r['question_id']}", tuple(r["turns"]))
            for r in _read_jsonl(DATA_DIR / "mt_bench" / "question.jsonl")
        ]
    elif subset == "pard":
        items = _single_turn(name, [r["data"] for r in _read_jsonl(DATA_DIR / "pard_bmk" / f"{name}.jsonl")])
    elif name == "humaneval":
        items = [
            Conversation(r["task_id"], (HUMANEVAL_PREFIX + r["prompt"],))
            for r in _read_jsonl(DATA_DIR / "humaneval" / "HumanEval.jsonl.gz")
        ]
    elif name == "gsm8k":
        items = _single_turn("gsm8k", [r["question"] for r in _read_jsonl(DATA_DIR / "gsm8k" / "test.jsonl")])
    else:
        items = [
            Conversation(r["unique_id"], (r["problem"],)) for r in _read_jsonl(DATA_DIR / "math500" / "test.jsonl")
        ]
    return items if num_prompts is None else items[:num_prompts]


class PromptRenderer:
    """Turns a conversation so far into prompt token ids.

    With a chat template: the template, generation prompt added, and Qwen3's
    thinking off (``enable_thinking=False``; templates that do not know the
    flag ignore it). Without one: the turns and answers joined by blank lines.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.uses_chat_template = bool(getattr(tokenizer, "chat_template", None))

    def messages(self, turns: tuple[str, ...], answers: list[str]) -> list[dict[str, str]]:
        """Chat messages for asking ``turns[len(answers)]`` after the earlier answers."""
        asked = len(answers)
        messages = []
        for turn, answer in zip(turns[:asked], answers, strict=True):
            messages += [{"role": "user", "content": turn}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": turns[asked]})
        return messages

    def text(self, turns: tuple[str, ...], answers: list[str]) -> str:
        messages = self.messages(turns, answers)
        if self.uses_chat_template:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
            )
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def token_ids(self, turns: tuple[str, ...], answers: list[str]) -> list[int]:
        """Prompt ids; a chat template writes its own special tokens, so none are added then."""
        text = self.text(turns, answers)
        return list(self.tokenizer(text, add_special_tokens=not self.uses_chat_template)["input_ids"])
