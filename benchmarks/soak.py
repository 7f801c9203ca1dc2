"""Soak / load test of ``vllm-pard2 serve`` through the OpenAI API.

Many concurrent clients send a mix of requests to a pard2 server: greedy
streaming completions (some with stop strings, some with logprobs, some with
prompts that nearly fill ``max_model_len``), streaming chat, sampled requests
with ``n > 1``, streams the client abandons mid-way, clients that disconnect
before the first byte, and malformed requests that must get a 4xx. Every
greedy result (token ids, and chosen-token logprobs where asked) is compared
with a no-speculation server given the same request; an abandoned stream must
be a prefix of that reference. The report counts completed requests, errors,
latency percentiles, identical-to-no-spec results and server memory growth.

    # against two running servers (pard2 and no-spec, same target):
    python benchmarks/soak.py --pard2-url http://127.0.0.1:8000 --nospec-url http://127.0.0.1:8001 \\
        --tokenizer TARGET --max-model-len 256 --duration-s 1800 --out soak.json
    # or start both servers on the tiny pair (built into DIR) and run 30 minutes, niced:
    nice -n 10 python benchmarks/soak.py --tiny-pair DIR --duration-s 1800 --nice 10 --out soak.json

``run_soak`` is the same workload as a function (used by tests/test_serving_load.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

if __name__ == "__main__" and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    # Run as a script: put the repository root first instead of benchmarks/, whose
    # module names (datasets.py, ...) would shadow top-level packages.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

MODEL_NAME = "tiny"  # --served-model-name of the servers
# Request kinds and their weights in the mix.
KIND_WEIGHTS = {
    "greedy_stream": 5,
    "greedy_stop": 2,
    "greedy_logprobs": 2,
    "long_prompt": 2,
    "chat_stream": 2,
    "sampled_n": 2,
    "abort_midstream": 2,
    "disconnect": 1,
    "bad_request": 1,
}
GREEDY_KINDS = ("greedy_stream", "greedy_stop", "greedy_logprobs", "long_prompt", "chat_stream")
MAX_TOKENS_CHOICES = (1, 2, 7, 16, 40)
STOP_STRINGS = (["e"], ["\n", "="], [" ", "s"])
LOGPROB_ATOL = 1e-3
CLIENT_KEEPALIVE_S = 2.0  # below the server's 5 s keep-alive timeout


def make_prompts(tokenizer_path: str | Path, lengths: list[int], seed: int) -> list[list[int]]:
    """Token-id prompts of the given lengths cut from stdlib source at random offsets."""
    from transformers import AutoTokenizer

    from vllm_pard2.tiny_pair import stdlib_corpus

    tok = AutoTokenizer.from_pretrained(tokenizer_path)
    ids = tok("\n".join(stdlib_corpus(40)))["input_ids"]
    rng = random.Random(seed)
    prompts = []
    for n in lengths:
        start = rng.randrange(0, len(ids) - n)
        prompts.append(ids[start : start + n])
    return prompts


@dataclass
class SoakStats:
    started: Counter = field(default_factory=Counter)
    completed: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    ttfts_s: list[float] = field(default_factory=list)
    greedy_compared: int = 0
    greedy_identical: int = 0
    mismatches: list[str] = field(default_factory=list)
    stop_hits: int = 0
    aborts_before_end: int = 0  # abandoned streams that had not finished yet
    disconnects_before_end: int = 0  # disconnects that cut a request short
    rss_samples: list[tuple[float, int]] = field(default_factory=list)

    def error(self, kind: str, message: str) -> None:
        self.errors.append(f"{kind}: {message}"[:600])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


class StreamResult:
    """What one streamed request produced, choice by choice."""

    def __init__(self) -> None:
        self.token_ids: dict[int, list[int]] = {}
        self.logprobs: dict[int, list[float]] = {}
        self.finish: dict[int, str | None] = {}
        self.chunks = 0
        self.ttft: float | None = None


async def stream_request(
    client: httpx.AsyncClient, url: str, body: dict, stop_after_chunks: int | None = None
) -> StreamResult:
    """POST a streaming request; collect token ids / logprobs per choice. With
    ``stop_after_chunks`` the client walks away mid-stream (connection closed)."""
    try:
        return await _stream(client, url, body, stop_after_chunks)
    except httpx.TransportError as exc:  # say which server dropped the connection
        raise RuntimeError(f"{url}: {type(exc).__name__} {exc}") from exc


async def _stream(client: httpx.AsyncClient, url: str, body: dict, stop_after_chunks: int | None) -> StreamResult:
    result = StreamResult()
    start = time.monotonic()
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            raise RuntimeError(f"HTTP {response.status_code}: {text[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"error chunk: {chunk['error']}")
            for choice in chunk.get("choices", []):
                i = choice["index"]
                result.token_ids.setdefault(i, []).extend(choice.get("token_ids") or [])
                lp = choice.get("logprobs")
                if lp and lp.get("token_logprobs") is not None:  # completions format
                    result.logprobs.setdefault(i, []).extend(lp["token_logprobs"])
                elif lp and lp.get("content") is not None:  # chat format
                    result.logprobs.setdefault(i, []).extend(c["logprob"] for c in lp["content"])
                if choice.get("finish_reason"):
                    result.finish[i] = choice["finish_reason"]
            result.chunks += 1
            if result.ttft is None and any(result.token_ids.values()):
                result.ttft = time.monotonic() - start
            if stop_after_chunks is not None and result.chunks >= stop_after_chunks:
                break
    return result


class References:
    """Greedy results of the no-spec server, one request per distinct body."""

    def __init__(self, client: httpx.AsyncClient, base_url: str) -> None:
        self.client, self.base_url = client, base_url
        self._futures: dict[str, asyncio.Future] = {}

    async def get(self, path: str, body: dict) -> StreamResult:
        key = path + json.dumps(body, sort_keys=True)
        if key not in self._futures:
            self._futures[key] = asyncio.ensure_future(stream_request(self.client, self.base_url + path, body))
        return await asyncio.shield(self._futures[key])


@dataclass
class SoakWorkload:
    pard2_url: str
    nospec_url: str
    prompts: list[list[int]]
    long_prompts: list[list[int]]
    max_model_len: int
    clients: int = 64
    requests_per_client: int | None = None
    duration_s: float | None = None
    seed: int = 0
    rss_probe: Any = None  # callable returning the pard2 server's RSS in bytes
    stats: SoakStats = field(default_factory=SoakStats)

    def _greedy_body(self, rng: random.Random, kind: str) -> tuple[str, dict]:
        body: dict[str, Any] = {"model": MODEL_NAME, "temperature": 0.0, "stream": True, "return_token_ids": True}
        if kind == "chat_stream":
            text = rng.choice(["Write a function.", "Sort a list in Python.", "def main():", "Explain recursion."])
            body.update(messages=[{"role": "user", "content": text}], max_tokens=rng.choice(MAX_TOKENS_CHOICES))
            return "/v1/chat/completions", body
        if kind == "long_prompt":
            prompt = rng.choice(self.long_prompts)
            body.update(prompt=prompt, max_tokens=self.max_model_len - len(prompt))
            return "/v1/completions", body
        body.update(prompt=rng.choice(self.prompts), max_tokens=rng.choice(MAX_TOKENS_CHOICES))
        if kind == "greedy_stop":
            body.update(stop=rng.choice(STOP_STRINGS), max_tokens=40)
        if kind == "greedy_logprobs":
            body["logprobs"] = rng.choice([1, 3, 5])
        return "/v1/completions", body

    async def _check_greedy(self, refs: References, kind: str, path: str, body: dict, got: StreamResult) -> None:
        want = await refs.get(path, body)
        if not want.token_ids.get(0) or 0 not in want.finish:
            raise RuntimeError(
                f"no-spec reference returned no tokens or no finish reason: {want.token_ids} {want.finish}"
            )
        self.stats.greedy_compared += 1
        same = got.token_ids == want.token_ids and got.finish == want.finish
        if same and body.get("logprobs"):
            same = len(got.logprobs.get(0, [])) == len(got.token_ids.get(0, [])) and all(
                abs(a - b) <= LOGPROB_ATOL for a, b in zip(got.logprobs[0], want.logprobs[0], strict=True)
            )
        if same:
            self.stats.greedy_identical += 1
            self.stats.stop_hits += got.finish.get(0) == "stop"
        else:
            self.stats.mismatches.append(
                f"{kind} {path} {json.dumps(body)[:300]}: pard2 {got.token_ids} {got.finish} "
                f"vs no-spec {want.token_ids} {want.finish}"[:1200]
            )

    async def _one(self, client: httpx.AsyncClient, refs: References, rng: random.Random, kind: str) -> bool:
        """Run one request of ``kind``; return True when it counts toward latency."""
        if kind in GREEDY_KINDS:
            path, body = self._greedy_body(rng, kind)
            got = await stream_request(client, self.pard2_url + path, body)
            self.stats.ttfts_s.append(got.ttft or 0.0)
            await self._check_greedy(refs, kind, path, body, got)
            return True
        if kind == "sampled_n":
            n = rng.choice([2, 3])
            body = {"model": MODEL_NAME, "prompt": rng.choice(self.prompts), "max_tokens": rng.choice((4, 16, 32)),
                    "n": n, "temperature": 0.8, "top_p": 0.95, "top_k": 50, "stream": True, "return_token_ids": True}  # fmt: skip
            got = await stream_request(client, self.pard2_url + "/v1/completions", body)
            lengths = [len(got.token_ids.get(i, [])) for i in range(n)]
            if sorted(got.finish) != list(range(n)) or not all(1 <= x <= body["max_tokens"] for x in lengths):
                raise RuntimeError(f"n={n}: finish {got.finish}, lengths {lengths}")
            return True
        if kind == "abort_midstream":
            path, body = self._greedy_body(rng, "greedy_stream")
            body["max_tokens"] = 40
            got = await stream_request(client, self.pard2_url + path, body, stop_after_chunks=rng.randint(1, 4))
            want = await refs.get(path, body)
            part, full = got.token_ids.get(0, []), want.token_ids.get(0, [])
            self.stats.aborts_before_end += 0 not in got.finish
            if full[: len(part)] != part:
                self.stats.mismatches.append(f"abandoned stream is not a prefix of no-spec: {part} vs {full}")
            return False
        if kind == "disconnect":
            path, body = self._greedy_body(rng, "greedy_stream")
            body["max_tokens"] = 40
            try:
                await asyncio.wait_for(stream_request(client, self.pard2_url + path, body), rng.uniform(0.001, 0.05))
            except asyncio.TimeoutError:
                self.stats.disconnects_before_end += 1
            return False
        if kind == "bad_request":
            name, path, payload, status, message = rng.choice(_server_utils().bad_requests(self.max_model_len))
            kwargs = {"content": payload, "headers": {"Content-Type": "application/json"}}
            if not isinstance(payload, str):
                kwargs = {"json": payload}
            response = await client.post(self.pard2_url + path, **kwargs)
            error = response.json().get("error", {}) if response.status_code != 200 else {}
            if response.status_code != status or message not in str(error.get("message", "")):
                raise RuntimeError(f"bad request {name}: HTTP {response.status_code} {response.text[:300]}")
            return False
        raise ValueError(kind)

    async def _client_loop(self, index: int, client: httpx.AsyncClient, refs: References, deadline: float) -> None:
        rng = random.Random(self.seed * 100_003 + index)
        kinds, weights = zip(*KIND_WEIGHTS.items(), strict=True)
        done = 0
        while True:
            if self.requests_per_client is not None and done >= self.requests_per_client:
                return
            if self.duration_s is not None and time.monotonic() >= deadline:
                return
            # The first requests of each client cycle through every kind.
            kind = kinds[(index + done) % len(kinds)] if done < len(kinds) // 2 else rng.choices(kinds, weights)[0]
            done += 1
            self.stats.started[kind] += 1
            start = time.monotonic()
            try:
                timed = await self._one(client, refs, rng, kind)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                self.stats.error(kind, f"{type(exc).__name__}: {exc}")
                continue
            self.stats.completed[kind] += 1
            if timed:
                self.stats.latencies_s.append(time.monotonic() - start)

    async def _sample_rss(self, stop: asyncio.Event, period_s: float) -> None:
        t0 = time.monotonic()
        while True:
            if self.rss_probe is not None:
                self.stats.rss_samples.append((time.monotonic() - t0, self.rss_probe()))
            try:
                await asyncio.wait_for(stop.wait(), period_s)
                return
            except asyncio.TimeoutError:
                continue

    async def run(self, rss_period_s: float = 15.0) -> dict:
        # Idle connections expire on the client well before the server's keep-alive
        # timeout (VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 s): otherwise a request can go out on
        # a connection the server is closing, and fails with a ReadError that no server
        # caused (the likely cause of 4 ReadErrors in 29 729 requests of a 30-minute
        # soak, 3 of them on the no-speculation server; neither server logged an error).
        limits = httpx.Limits(
            max_connections=2 * self.clients + 8,
            max_keepalive_connections=2 * self.clients,
            keepalive_expiry=CLIENT_KEEPALIVE_S,
        )
        timeout = httpx.Timeout(600.0, connect=30.0)
        async with (
            httpx.AsyncClient(limits=limits, timeout=timeout) as client,
            httpx.AsyncClient(limits=limits, timeout=timeout) as ref_client,
        ):
            refs = References(ref_client, self.nospec_url)
            stop = asyncio.Event()
            sampler = asyncio.ensure_future(self._sample_rss(stop, rss_period_s))
            t0 = time.monotonic()
            deadline = t0 + (self.duration_s or 0.0)
            await asyncio.gather(*(self._client_loop(i, client, refs, deadline) for i in range(self.clients)))
            elapsed = time.monotonic() - t0
            stop.set()
            await sampler
            health = await client.get(self.pard2_url + "/health")
        return self.report(elapsed, health.status_code == 200)

    def report(self, elapsed_s: float, healthy_after: bool) -> dict:
        s = self.stats
        rss = [r for _, r in s.rss_samples]
        return {
            "elapsed_s": round(elapsed_s, 1),
            "clients": self.clients,
            "started": dict(s.started),
            "completed": dict(s.completed),
            "completed_total": sum(s.completed.values()),
            "error_count": len(s.errors),
            "errors": s.errors[:20],
            "greedy_compared": s.greedy_compared,
            "greedy_identical": s.greedy_identical,
            "mismatch_count": len(s.mismatches),
            "mismatches": s.mismatches[:10],
            "stop_hits": s.stop_hits,
            "aborts_before_end": s.aborts_before_end,
            "disconnects_before_end": s.disconnects_before_end,
            "latency_p50_s": round(percentile(s.latencies_s, 50), 3),
            "latency_p99_s": round(percentile(s.latencies_s, 99), 3),
            "ttft_p50_s": round(percentile(s.ttfts_s, 50), 3),
            "ttft_p99_s": round(percentile(s.ttfts_s, 99), 3),
            "rss_first_mib": round(rss[0] / 2**20, 1) if rss else None,
            "rss_last_mib": round(rss[-1] / 2**20, 1) if rss else None,
            "rss_max_mib": round(max(rss) / 2**20, 1) if rss else None,
            "rss_samples_mib": [(round(t), round(r / 2**20, 1)) for t, r in s.rss_samples],
            "healthy_after": healthy_after,
        }


def run_soak(workload: SoakWorkload) -> dict:
    return asyncio.run(workload.run())


def default_prompts(tokenizer: str | Path, max_model_len: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """48 prompts of 4 .. min(120, max_model_len / 2) tokens, and 4 that leave only
    4 .. 7 tokens of room before ``max_model_len``."""
    rng = random.Random(seed)
    short = make_prompts(tokenizer, [rng.randint(4, min(120, max_model_len // 2)) for _ in range(48)], seed)
    long = make_prompts(tokenizer, [max_model_len - 4 - i for i in range(4)], seed + 1)
    return short, long


def _server_utils():
    """tests/server_utils.py, the launcher shared with the tests."""
    tests_dir = str(Path(__file__).resolve().parent.parent / "tests")
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    import server_utils

    return server_utils


def _launch_pair(args: argparse.Namespace, log_dir: Path) -> tuple[Any, Any]:
    """Start the pard2 and no-spec servers (same settings as tests/test_serving_load.py)."""
    server_utils = _server_utils()
    spec = json.dumps({"method": "pard2", "model": str(args.draft), "num_speculative_tokens": args.k})
    pard2_port, nospec_port = server_utils.free_ports(2)
    common = dict(max_model_len=args.max_model_len, kv_cache_bytes=args.kv_cache_bytes, nice=args.nice)
    pard2 = server_utils.launch("pard2", args.target, pard2_port, log_dir,
                                ["--speculative-config", spec, "--max-num-batched-tokens", str(args.max_num_batched_tokens)],
                                **common)  # fmt: skip
    nospec = server_utils.launch("nospec", args.target, nospec_port, log_dir, [], **common)
    deadline = time.monotonic() + server_utils.HEALTH_TIMEOUT_S
    for server in (pard2, nospec):
        server_utils.wait_healthy(server, deadline)
    return pard2, nospec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pard2-url"), parser.add_argument("--nospec-url")
    parser.add_argument("--pard2-pgid", type=int, help="process group of the pard2 server, for its memory")
    parser.add_argument("--tiny-pair", type=Path, help="build the tiny pair here and start both servers")
    parser.add_argument("--target", type=Path), parser.add_argument("--draft", type=Path)
    parser.add_argument("--tokenizer", type=Path, help="defaults to --target")
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    parser.add_argument("--max-model-len", type=int, default=256)
    parser.add_argument("--max-num-batched-tokens", type=int, default=128)
    parser.add_argument("--kv-cache-bytes", type=int, default=64 << 20)
    parser.add_argument("--nice", type=int, default=0, help="niceness of servers started here")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration-s", type=float), parser.add_argument("--requests-per-client", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-dir", type=Path, default=Path("soak_logs"))
    parser.add_argument("--out", type=Path, help="write the JSON report here too")
    args = parser.parse_args()
    if (args.duration_s is None) == (args.requests_per_client is None):
        parser.error("give exactly one of --duration-s and --requests-per-client")

    servers = ()
    if args.tiny_pair is not None:
        from vllm_pard2.tiny_pair import build_tiny_pair

        paths = build_tiny_pair(args.tiny_pair)
        args.target, args.draft = args.target or paths["target"], args.draft or paths["draft_noisy"]
    if args.pard2_url is None:
        args.log_dir.mkdir(parents=True, exist_ok=True)
        servers = _launch_pair(args, args.log_dir)
        args.pard2_url, args.nospec_url, args.pard2_pgid = servers[0].base_url, servers[1].base_url, servers[0].proc.pid
    probe = None if args.pard2_pgid is None else (lambda: _server_utils().process_group_rss(args.pard2_pgid))
    try:
        prompts, long_prompts = default_prompts(args.tokenizer or args.target, args.max_model_len, args.seed)
        workload = SoakWorkload(args.pard2_url, args.nospec_url, prompts, long_prompts, args.max_model_len,
                                clients=args.clients, requests_per_client=args.requests_per_client,
                                duration_s=args.duration_s, seed=args.seed, rss_probe=probe)  # fmt: skip
        report = run_soak(workload)
    finally:
        for server in servers:
            _server_utils().stop(server)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    ok = report["error_count"] == 0 and report["mismatch_count"] == 0 and report["healthy_after"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
