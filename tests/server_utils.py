"""Start and stop ``vllm-pard2 serve`` processes on 127.0.0.1, and the bad requests they must
refuse (used by the tests and by benchmarks/soak.py).

Each server runs in its own process group so that its engine and worker
processes stop with it. Nothing here imports pytest: a server that fails to
come up raises ``ServerStartError`` with the tail of its log.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import openai
import requests

HEALTH_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 120.0
MODEL_NAME = "tiny"


class ServerStartError(RuntimeError):
    """The server exited or never answered /health; the message holds its log tail."""


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    base_url: str
    log_path: Path
    log_file: IO[bytes]

    def log_tail(self, num_lines: int = 80) -> str:
        self.log_file.flush()
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(lines[-num_lines:])

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.base_url}/v1",
            api_key="EMPTY",
            timeout=REQUEST_TIMEOUT_S,
            max_retries=0,
        )

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.base_url}/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def rss_bytes(self) -> int:
        """Resident memory of the server and every process in its group (engine, workers)."""
        return process_group_rss(self.proc.pid)


def process_group_rss(pgid: int) -> int:
    """Sum of VmRSS over the live processes whose process group is ``pgid`` (Linux /proc)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) != pgid:
                continue
            with open(f"/proc/{entry}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, ValueError):
            continue
    return total


def free_ports(count: int) -> list[int]:
    """Distinct free ports on 127.0.0.1 (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def serve_command() -> list[str]:
    script = Path(sys.executable).parent / "vllm-pard2"
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-m", "vllm_pard2.cli", "serve"]


def launch(
    name: str,
    target: Path,
    port: int,
    log_dir: Path,
    extra: list[str],
    *,
    max_model_len: int,
    kv_cache_bytes: int,
    env: dict[str, str] | None = None,
    nice: int = 0,
) -> Server:
    """Start one server (float32, eager, seed 0, prefix caching) without waiting for it."""
    args = [
        *serve_command(),
        str(target),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--served-model-name", MODEL_NAME,
        "--dtype", "float32",
        "--max-model-len", str(max_model_len),
        "--enforce-eager",
        "--seed", "0",
        "--kv-cache-memory-bytes", str(kv_cache_bytes),
        "--enable-prefix-caching",
        *extra,
    ]  # fmt: skip
    if nice:
        args = ["nice", "-n", str(nice), *args]
    full_env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        **(env or {}),
    )
    log_path = log_dir / f"{name}.log"
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
    log_file.write(("$ " + " ".join(args) + "\n").encode())
    log_file.flush()
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=full_env,
        start_new_session=True,  # own process group: engine workers die with it
    )
    return Server(name, proc, f"http://127.0.0.1:{port}", log_path, log_file)


def wait_healthy(server: Server, deadline: float) -> None:
    """Poll /health until it answers 200; raise ``ServerStartError`` on exit or timeout."""
    while True:
        code = server.proc.poll()
        if code is not None:
            raise ServerStartError(
                f"{server.name} server exited with code {code} before becoming healthy; "
                f"log tail ({server.log_path}):\n{server.log_tail()}"
            )
        if server.healthy():
            return
        if time.monotonic() > deadline:
            raise ServerStartError(
                f"{server.name} server not healthy in time; log tail ({server.log_path}):\n{server.log_tail()}"
            )
        time.sleep(1.0)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop(server: Server) -> None:
    """SIGTERM the server's process group; SIGKILL whatever is left after a timeout."""
    pgid = server.proc.pid  # leader of its own session / process group
    try:
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while time.monotonic() < deadline and (server.proc.poll() is None or _group_alive(pgid)):
                time.sleep(0.2)
            if _group_alive(pgid):
                os.killpg(pgid, signal.SIGKILL)
        server.proc.wait(timeout=STOP_TIMEOUT_S)
    except ProcessLookupError:
        pass
    finally:
        server.log_file.close()


def bad_requests(max_model_len: int) -> list[tuple[str, str, dict | str, int, str]]:
    """(name, path, body, expected status, expected message substring) of requests a
    server must refuse with a clear OpenAI-style error while it keeps serving."""
    ok = {"model": MODEL_NAME, "prompt": "def f(x):", "max_tokens": 4}
    return [
        ("prompt_too_long", "/v1/completions", {**ok, "prompt": [5] * (max_model_len + 1)}, 400, "maximum context length"),
        ("prompt_fills_context", "/v1/completions", {**ok, "prompt": [5] * max_model_len, "max_tokens": 1}, 400, "max_tokens"),
        ("max_tokens_zero", "/v1/completions", {**ok, "max_tokens": 0}, 400, "max_tokens must be at least 1"),
        ("max_tokens_negative", "/v1/completions", {**ok, "max_tokens": -3}, 400, "max_tokens must be at least 1"),
        ("max_tokens_too_large", "/v1/completions", {**ok, "max_tokens": 10 * max_model_len}, 400, "max_model_len"),
        ("negative_temperature", "/v1/completions", {**ok, "temperature": -0.5}, 400, "temperature must be non-negative"),
        ("top_p_above_one", "/v1/completions", {**ok, "top_p": 1.5}, 400, "top_p must be in (0, 1]"),
        ("top_p_zero", "/v1/completions", {**ok, "top_p": 0.0}, 400, "top_p must be in (0, 1]"),
        ("top_k_negative", "/v1/completions", {**ok, "top_k": -5}, 400, "top_k must be 0"),
        ("unknown_model", "/v1/completions", {**ok, "model": "no-such-model"}, 404, "does not exist"),
        ("malformed_json", "/v1/completions", '{"model": "tiny", "prompt": "x",', 400, "JSON decode error"),
        ("n_zero", "/v1/completions", {**ok, "n": 0}, 400, "n must be at least 1"),
        ("n_too_large", "/v1/completions", {**ok, "n": 100_000}, 400, "n must be at most"),
        ("logprobs_too_many", "/v1/completions", {**ok, "logprobs": 1000}, 400, "logprobs"),
        ("chat_top_logprobs_too_many", "/v1/chat/completions",
         {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
          "logprobs": True, "top_logprobs": 100}, 400, "logprobs"),
        ("stop_wrong_type", "/v1/completions", {**ok, "stop": 123}, 400, "stop"),
        ("missing_prompt", "/v1/completions", {"model": MODEL_NAME, "max_tokens": 4}, 400, "prompt"),
        ("token_out_of_vocab", "/v1/completions", {**ok, "prompt": [10_000_000]}, 400, "out of vocabulary"),
        ("frequency_penalty_out_of_range", "/v1/completions", {**ok, "frequency_penalty": 5.0}, 400, "frequency_penalty"),
        ("bad_stream_request", "/v1/completions", {**ok, "max_tokens": 0, "stream": True}, 400, "max_tokens"),
    ]  # fmt: skip
