"""End to end through the OpenAI-compatible server: ``vllm-pard2 serve``.

Two servers run side by side on 127.0.0.1, one with pard2 speculation (small
``--max-num-batched-tokens`` so long prompts take chunked prefill, prefix
caching on) and one without; greedy outputs must be identical and the pard2
server must export spec-decode metrics that the other lacks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import prometheus_client.parser as prometheus_parser
import pytest
import requests

from conftest import KV_CACHE_BYTES, MAX_MODEL_LEN
from server_utils import HEALTH_TIMEOUT_S, MODEL_NAME, Server, free_ports, launch, stop, wait_healthy

NUM_SPEC_TOKENS = 4
MAX_NUM_BATCHED_TOKENS = 64
MAX_TOKENS = 32

_LONG_CODE = '''import os
import sys
from pathlib import Path


def read_config(path: Path) -> dict:
    """Read a key = value file into a dict, skipping comments."""
    result = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, _, value = line.partition("=")
'''

PROMPTS = [
    "def fib(n):",
    "import os\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):",
    # > MAX_NUM_BATCHED_TOKENS tokens: prefilled in several chunks.
    _LONG_CODE,
    # Shares a long prefix with the previous prompt: prefix-cache hits.
    _LONG_CODE + "            result[key.strip()] = value.strip()\n    return result\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n" * 4,
]


@pytest.fixture(scope="module")
def servers(tiny_pair, tmp_path_factory) -> Iterator[dict[str, Server]]:
    """Both servers, started concurrently; ``"pard2"`` and ``"nospec"``."""
    log_dir = tmp_path_factory.mktemp("server_logs")
    spec_config = json.dumps(
        {
            "method": "pard2",
            "model": str(tiny_pair["draft_copy"]),
            "num_speculative_tokens": NUM_SPEC_TOKENS,
        }
    )
    pard2_port, nospec_port = free_ports(2)
    common = dict(max_model_len=MAX_MODEL_LEN, kv_cache_bytes=KV_CACHE_BYTES)
    started: dict[str, Server] = {}
    try:
        started["pard2"] = launch(
            "pard2",
            tiny_pair["target"],
            pard2_port,
            log_dir,
            [
                "--speculative-config", spec_config,
                "--max-num-batched-tokens", str(MAX_NUM_BATCHED_TOKENS),
            ],
            **common,
        )  # fmt: skip
        started["nospec"] = launch("nospec", tiny_pair["target"], nospec_port, log_dir, [], **common)
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        for server in started.values():
            wait_healthy(server, deadline)
        yield started
    finally:
        for server in started.values():
            stop(server)


def _metric_families(server: Server) -> dict[str, Any]:
    response = requests.get(f"{server.base_url}/metrics", timeout=10)
    response.raise_for_status()
    return {f.name: f for f in prometheus_parser.text_string_to_metric_families(response.text)}


def _counter(families: dict[str, Any], name: str) -> float:
    """Sum of a counter's ``_total`` samples (over engines / positions)."""
    assert name in families, f"{name} missing from /metrics"
    return sum(s.value for s in families[name].samples if s.name == f"{name}_total")


def _complete(server: Server, prompts: list[str]) -> list[tuple[str, str]]:
    response = server.client().completions.create(
        model=MODEL_NAME, prompt=prompts, max_tokens=MAX_TOKENS, temperature=0.0
    )
    choices = sorted(response.choices, key=lambda c: c.index)
    assert len(choices) == len(prompts)
    return [(c.text, c.finish_reason) for c in choices]


def test_prompts_cover_chunked_prefill(tiny_pair) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_pair["target"])
    lengths = [len(tokenizer(p).input_ids) for p in PROMPTS]
    assert max(lengths) > MAX_NUM_BATCHED_TOKENS, lengths
    assert min(lengths) < MAX_NUM_BATCHED_TOKENS, lengths
    assert max(lengths) + MAX_TOKENS <= MAX_MODEL_LEN, lengths


def test_completions_match_no_speculation(servers) -> None:
    expected = _complete(servers["nospec"], PROMPTS)
    assert _complete(servers["pard2"], PROMPTS) == expected
    # Again: prompts now hit the prefix cache (and run in a different batch).
    assert _complete(servers["pard2"], PROMPTS) == expected
    assert any(text for text, _ in expected)


def test_streaming_chat_matches_no_speculation(servers) -> None:
    messages = [
        {"role": "user", "content": "Write a Python function that reverses a list."},
    ]

    def stream(server: Server) -> tuple[str, str | None]:
        chunks = server.client().chat.completions.create(
            model=MODEL_NAME,
            messages=messages,
            max_tokens=MAX_TOKENS,
            temperature=0.0,
            stream=True,
        )
        text, finish_reason = [], None
        for chunk in chunks:
            for choice in chunk.choices:
                text.append(choice.delta.content or "")
                finish_reason = choice.finish_reason or finish_reason
        return "".join(text), finish_reason

    expected = stream(servers["nospec"])
    assert expected[0], "no-spec server streamed no text"
    assert stream(servers["pard2"]) == expected


def test_metrics_show_pard2_speculation(servers) -> None:
    pard2 = servers["pard2"]
    # Traffic of our own, whatever ran before; the second round hits the prefix cache.
    for _ in range(2):
        _complete(pard2, PROMPTS)

    families = _metric_families(pard2)
    drafts = _counter(families, "vllm:spec_decode_num_drafts")
    accepted = _counter(families, "vllm:spec_decode_num_accepted_tokens")
    assert drafts > 0
    # The draft is the target's own weights: its first position is accepted often.
    assert accepted > 0
    positions = {
        s.labels["position"]
        for s in families["vllm:spec_decode_num_accepted_tokens_per_pos"].samples
        if "position" in s.labels
    }
    assert len(positions) == NUM_SPEC_TOKENS
    assert _counter(families, "vllm:prefix_cache_hits") > 0

    assert "method='pard2'" in pard2.log_path.read_text(encoding="utf-8", errors="replace")

    nospec = _metric_families(servers["nospec"])
    assert "vllm:generation_tokens" in nospec  # its metrics endpoint works...
    assert not [name for name in nospec if name.startswith("vllm:spec_decode")]
