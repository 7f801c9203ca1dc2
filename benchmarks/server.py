"""Server measurement: concurrent streaming clients against an OpenAI-compatible server.

``batch_size`` clients run at once; each takes the next conversation, streams
its turns one after the other from ``/v1/completions`` and timestamps every
chunk. Prompts are rendered here with the same tokenizer and template as the
in-process run and sent as token ids, so both drivers send identical prompts.
Spec-decode counters come from the server's Prometheus ``/metrics`` (vLLM
exports them); a server without them gets no tau.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from benchmarks.datasets import Conversation, PromptRenderer
from benchmarks.measure import RequestRecord, RunMeasurement, SpecCounters

REQUEST_TIMEOUT_S = 600.0


def normalize_url(url: str) -> str:
    """Base URL without a trailing ``/`` or ``/v1``."""
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def served_model(url: str) -> tuple[str, int | None]:
    """Id and max_model_len (vLLM lists it; None elsewhere) of the first model at ``/v1/models``."""
    import requests

    response = requests.get(f"{url}/v1/models", timeout=30)
    response.raise_for_status()
    models = response.json().get("data", [])
    if not models:
        raise RuntimeError(f"{url}/v1/models lists no model")
    return models[0]["id"], models[0].get("max_model_len")


def read_server_counters(url: str) -> SpecCounters | None:
    """Spec-decode counters from ``/metrics``; zeros when the server does not speculate,
    None when it has no Prometheus endpoint."""
    import prometheus_client.parser as prometheus_parser
    import requests

    try:
        response = requests.get(f"{url}/metrics", timeout=30)
        response.raise_for_status()
    except requests.RequestException:
        return None
    counters = SpecCounters()
    per_pos: dict[int, float] = {}
    for family in prometheus_parser.text_string_to_metric_families(response.text):
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            name = sample.name[: -len("_total")]
            if name == "vllm:spec_decode_num_drafts":
                counters.drafts += sample.value
            elif name == "vllm:spec_decode_num_draft_tokens":
                counters.draft_tokens += sample.value
            elif name == "vllm:spec_decode_num_accepted_tokens":
                counters.accepted += sample.value
            elif name == "vllm:spec_decode_num_accepted_tokens_per_pos" and "position" in sample.labels:
                pos = int(sample.labels["position"])
                per_pos[pos] = per_pos.get(pos, 0.0) + sample.value
    counters.accepted_per_pos = [per_pos.get(i, 0.0) for i in range(max(per_pos, default=-1) + 1)]
    return counters


class ServerDriver:
    """Streams conversations from one server with a fixed number of concurrent clients."""

    def __init__(
        self,
        url: str,
        model: str,
        renderer: PromptRenderer,
        max_tokens: int,
        temperature: float,
        ignore_eos: bool,
        seed: int,
        max_model_len: int | None = None,
    ) -> None:
        self.url = normalize_url(url)
        self.model = model
        self.renderer = renderer
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.ignore_eos = ignore_eos
        self.seed = seed
        self.max_model_len = max_model_len
        self._next_seed = seed

    async def _turn(self, client: Any, ids: list[int], max_tokens: int) -> tuple[RequestRecord, str]:
        record = RequestRecord(len(ids), time.perf_counter())
        extra_body: dict[str, Any] = {"ignore_eos": self.ignore_eos, "skip_special_tokens": True}
        if self.temperature > 0:
            self._next_seed += 1
            extra_body["seed"] = self._next_seed
        stream = await client.completions.create(
            model=self.model,
            prompt=ids,
            max_tokens=max_tokens,
            temperature=self.temperature,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra_body,
        )
        pieces: list[str] = []
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].text:
                pieces.append(chunk.choices[0].text)
                record.chunk_times.append(now)
            if chunk.usage is not None:
                record.output_tokens = chunk.usage.completion_tokens
        record.end = time.perf_counter()
        return record, "".join(pieces)

    async def _run(
        self, conversations: list[Conversation], batch_size: int, on_turn_done: Callable[[], None] | None
    ) -> tuple[list[RequestRecord], int]:
        import openai

        client = openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key="EMPTY", timeout=REQUEST_TIMEOUT_S, max_retries=0
        )
        queue: asyncio.Queue[Conversation] = asyncio.Queue()
        for conversation in conversations:
            queue.put_nowait(conversation)
        records: list[RequestRecord] = []
        skipped = 0

        async def client_loop() -> None:
            nonlocal skipped
            while not queue.empty():
                conversation = queue.get_nowait()
                answers: list[str] = []
                for _ in conversation.turns:
                    ids = self.renderer.token_ids(conversation.turns, answers)
                    max_tokens = self.max_tokens
                    if self.max_model_len is not None:
                        max_tokens = min(max_tokens, self.max_model_len - len(ids))
                    if max_tokens < 1:
                        remaining = len(conversation.turns) - len(answers)
                        skipped += remaining
                        for _ in range(remaining):
                            if on_turn_done is not None:
                                on_turn_done()
                        break
                    record, text = await self._turn(client, ids, max_tokens)
                    records.append(record)
                    answers.append(text)
                    if on_turn_done is not None:
                        on_turn_done()

        try:
            await asyncio.gather(*(client_loop() for _ in range(batch_size)))
        finally:
            await client.close()
        return records, skipped

    def warm_up(self, conversation: Conversation) -> None:
        ids = self.renderer.token_ids(conversation.turns[:1], [])
        asyncio.run(self._warm_up(ids))

    async def _warm_up(self, ids: list[int]) -> None:
        import openai

        client = openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="EMPTY", timeout=REQUEST_TIMEOUT_S)
        try:
            await self._turn(client, ids, 8)
        finally:
            await client.close()

    def run(
        self, conversations: list[Conversation], batch_size: int, on_turn_done: Callable[[], None] | None = None
    ) -> RunMeasurement:
        before = read_server_counters(self.url)
        start = time.perf_counter()
        records, skipped = asyncio.run(self._run(conversations, batch_size, on_turn_done))
        duration = time.perf_counter() - start
        after = read_server_counters(self.url)
        spec = after - before if after is not None and before is not None else None
        return RunMeasurement(records, duration, spec, skipped)
