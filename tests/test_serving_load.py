"""The OpenAI server under load and under bad requests (issue 7).

A pard2 server (draft_noisy, k=4, small ``--max-num-batched-tokens`` so long
prompts take chunked prefill) and a no-spec server on the same target.

* Every class of bad request gets the OpenAI-style 4xx error with a message that
  names the problem, and the server keeps serving correct greedy output.
* 64 concurrent streaming clients run the benchmarks/soak.py mix (greedy with stop
  strings / logprobs / prompts near max_model_len, chat, n > 1 sampling, streams
  abandoned mid-way, clients disconnecting, bad requests): no errors, every greedy
  result identical to the no-spec server's, and afterwards no request is left
  running or waiting in the engine and the server still answers correctly.

The 30-minute version is ``python benchmarks/soak.py --duration-s 1800 ...``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import prometheus_client.parser as prometheus_parser
import pytest
import requests

from conftest import KV_CACHE_BYTES, MAX_MODEL_LEN
from server_utils import HEALTH_TIMEOUT_S, MODEL_NAME, Server, bad_requests, free_ports, launch, stop, wait_healthy

# The repository root, so that benchmarks/ imports as a package (its module names,
# e.g. datasets.py, must not shadow top-level packages).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import soak  # noqa: E402

NUM_CLIENTS = 64
REQUESTS_PER_CLIENT = 3  # 192 requests: every kind at least 21 times
CANARY = {"model": MODEL_NAME, "prompt": [17, 401, 93, 250, 611], "max_tokens": 12, "temperature": 0.0}


@pytest.fixture(scope="module")
def servers(tiny_pair, tmp_path_factory) -> Iterator[dict[str, Server]]:
    log_dir = tmp_path_factory.mktemp("serving_load_logs")
    spec = json.dumps({"method": "pard2", "model": str(tiny_pair["draft_noisy"]), "num_speculative_tokens": 4})
    pard2_port, nospec_port = free_ports(2)
    common = dict(max_model_len=MAX_MODEL_LEN, kv_cache_bytes=KV_CACHE_BYTES)
    started: dict[str, Server] = {}
    try:
        started["pard2"] = launch(
            "pard2",
            tiny_pair["target"],
            pard2_port,
            log_dir,
            ["--speculative-config", spec, "--max-num-batched-tokens", "64"],
            **common,
        )
        started["nospec"] = launch("nospec", tiny_pair["target"], nospec_port, log_dir, [], **common)
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        for server in started.values():
            wait_healthy(server, deadline)
        yield started
    finally:
        for server in started.values():
            stop(server)


def _canary(server: Server) -> list[int]:
    response = requests.post(f"{server.base_url}/v1/completions", json={**CANARY, "return_token_ids": True}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["token_ids"]


@pytest.fixture(scope="module")
def canary_tokens(servers) -> list[int]:
    tokens = _canary(servers["nospec"])
    assert len(tokens) == CANARY["max_tokens"]
    return tokens


BAD = bad_requests(MAX_MODEL_LEN)


@pytest.mark.parametrize("name, path, body, status, message", BAD, ids=[b[0] for b in BAD])
def test_bad_request_gets_openai_error(servers, canary_tokens, name, path, body, status, message) -> None:
    pard2 = servers["pard2"]
    if isinstance(body, str):
        response = requests.post(
            pard2.base_url + path, data=body, headers={"Content-Type": "application/json"}, timeout=30
        )
    else:
        response = requests.post(pard2.base_url + path, json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"], error
    assert error["code"] == status and error["type"], error
    # Still healthy, and still exact.
    assert pard2.healthy(), pard2.log_tail()
    assert _canary(pard2) == canary_tokens


def _gauge(server: Server, name: str) -> float:
    text = requests.get(f"{server.base_url}/metrics", timeout=10).text
    for family in prometheus_parser.text_string_to_metric_families(text):
        if family.name == name:
            return sum(s.value for s in family.samples)
    raise AssertionError(f"{name} missing from /metrics")


def test_64_streaming_clients_match_no_speculation(servers, tiny_pair, canary_tokens) -> None:
    pard2, nospec = servers["pard2"], servers["nospec"]
    prompts, long_prompts = soak.default_prompts(tiny_pair["target"], MAX_MODEL_LEN, seed=0)
    workload = soak.SoakWorkload(
        pard2.base_url,
        nospec.base_url,
        prompts,
        long_prompts,
        MAX_MODEL_LEN,
        clients=NUM_CLIENTS,
        requests_per_client=REQUESTS_PER_CLIENT,
        rss_probe=pard2.rss_bytes,
    )
    report = soak.run_soak(workload)
    summary = {k: v for k, v in report.items() if k != "rss_samples_mib"}
    print(json.dumps(summary, indent=1))

    assert report["error_count"] == 0, report["errors"]
    assert report["mismatch_count"] == 0, report["mismatches"]
    assert report["completed_total"] == NUM_CLIENTS * REQUESTS_PER_CLIENT
    assert set(report["completed"]) == set(soak.KIND_WEIGHTS), report["completed"]
    assert report["greedy_compared"] == report["greedy_identical"] > 0
    assert report["stop_hits"] > 0, "no greedy request ended on a stop string"
    assert report["aborts_before_end"] > 0, "no stream was abandoned before its end"
    assert report["healthy_after"]

    # Aborted and disconnected requests are gone from the engine, and it still answers exactly.
    deadline = time.monotonic() + 30
    while _gauge(pard2, "vllm:num_requests_running") + _gauge(pard2, "vllm:num_requests_waiting") > 0:
        assert time.monotonic() < deadline, "requests left in the engine after the load"
        time.sleep(0.5)
    assert _canary(pard2) == canary_tokens
    assert pard2.proc.poll() is None and nospec.proc.poll() is None
