"""gpu_check's ``lossless`` part: the embedded pair compiled (CUDA graphs) against eager.

Six engines, one per variant: no speculation, pard2 target-dependent (TD) and
target-independent (TI), each compiled and eager. Each runs every prompt once, as one
batch and then the first few one at a time (batch 1 replays other CUDA graphs). Checks:
  - greedy output of TD and TI identical to no speculation under the same compilation;
  - tau (1 + accepted / drafts, bonus token counted) compiled within 1% of eager;
  - no failure of vLLM's CUDA-graph input-address check in any engine log. That check
    (``CUDAGraphWrapper.__call__`` in vllm/compilation/cuda_graph.py) asserts at every
    replay that each tensor argument has the address it had at capture, and runs only
    when vLLM logs at DEBUG, so every engine here runs with ``VLLM_LOGGING_LEVEL=DEBUG``.
    On CPU there are no CUDA graphs, so the check cannot fire there (recorded as inactive).
  - the plugin's own device-independent form of that check on the compiled draft
    (``VLLM_PARD2_CHECK_DRAFT_INPUTS``, vllm_pard2/proposer/input_contract.py): a report per
    speculative engine, failing on any input that moved; it covers the CPU dry run too.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

MODES = {"none": None, "td": "target_dependent", "ti": "target_independent"}
COMPILATIONS = ("compiled", "eager")
VARIANTS = [f"{mode}-{compilation}" for mode in MODES for compilation in COMPILATIONS]
TAU_TOLERANCE = 0.01
SINGLE_PROMPTS = 2  # run again one at a time
ADDRESS_CHECK_FAILURE = "Input addresses for cudagraphs are different"
CAPTURE_DEBUG_LINE = "Capturing a cudagraph"  # logged at DEBUG per capture: the check is armed
DRAFT_INPUT_CHECK_ENV = "VLLM_PARD2_CHECK_DRAFT_INPUTS"
CUDA_GRAPH_WORDS = re.compile(r"cuda ?graph|cudagraph", re.IGNORECASE)
PROBLEM_LEVEL = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback|AssertionError")


def embedded_pair() -> tuple[str, str]:
    import vllm_pard2

    root = Path(vllm_pard2.__file__).parent / "assets" / "tiny_pard2"
    return str(root / "target"), str(root / "draft")


def fixed_k() -> dict:
    """Adaptive k (where the plugin has it, on by default) picks k from measured step times, so
    tau would change from run to run; a fixed k makes compiled and eager comparable."""
    from vllm_pard2 import config

    return {"pard2_adaptive_k": False} if hasattr(config, "check_adaptive_k") else {}


def prompts(count: int) -> list[str]:
    """The example's code prompts (examples/offline_pard2.py), so runs compare with it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from offline_pard2 import make_prompts

    return make_prompts(count)


def lossless_worker(args: Any) -> int:
    """One engine for one variant: every prompt, greedy; writes WORK/lossless/<variant>.json."""
    import torch
    from vllm import LLM, SamplingParams

    mode, compilation = args.lossless_worker.split("-")
    target, draft = embedded_pair()
    spec = None
    if MODES[mode]:
        spec = {"method": "pard2", "model": draft, "num_speculative_tokens": args.k, "pard2_mode": MODES[mode]}
        spec.update(fixed_k())
    kwargs: dict[str, Any] = {
        "dtype": args.lossless_dtype,
        "kv_cache_memory_bytes": 64 << 20,
        "max_model_len": 512,
        "max_num_seqs": 16,  # fewer CUDA-graph sizes to capture
        "enforce_eager": compilation == "eager",
        "seed": 0,
        "disable_log_stats": False,  # spec-decode counters for tau
    }
    if torch.cuda.is_available():
        kwargs["gpu_memory_utilization"] = 0.04  # six small engines share the GPU
    else:
        # 2 CPU cores: each process importing vLLM costs ~15 s, so the engine runs in this one
        # (with VLLM_ENABLE_V1_MULTIPROCESSING=0 from lossless_part).
        kwargs["distributed_executor_backend"] = "uni"
    if spec:  # inherited by the engine processes started below
        os.environ[DRAFT_INPUT_CHECK_ENV] = str(args.work / "lossless" / f"{args.lossless_worker}.draft_inputs.json")
    started = time.monotonic()
    llm = LLM(model=target, speculative_config=spec, **kwargs)
    engine_start_s = time.monotonic() - started
    params = SamplingParams(temperature=0.0, max_tokens=args.lossless_tokens)
    texts = prompts(args.lossless_prompts)
    started = time.monotonic()
    batched = llm.generate(texts, params, use_tqdm=False)
    singles = [llm.generate([text], params, use_tqdm=False)[0] for text in texts[:SINGLE_PROMPTS]]
    generate_s = time.monotonic() - started
    drafts = accepted = 0.0
    for metric in llm.get_metrics():
        if metric.name == "vllm:spec_decode_num_drafts":
            drafts += metric.value
        elif metric.name == "vllm:spec_decode_num_accepted_tokens":
            accepted += metric.value
    record = {
        "variant": args.lossless_worker,
        "speculative_config": spec,
        "enforce_eager": kwargs["enforce_eager"],
        "engine_start_s": round(engine_start_s, 1),
        "generate_s": round(generate_s, 2),
        "batched_token_ids": [list(o.outputs[0].token_ids) for o in batched],
        "single_token_ids": [list(o.outputs[0].token_ids) for o in singles],
        "num_drafts": drafts,
        "num_accepted_tokens": accepted,
        "tau": 1.0 + accepted / drafts if drafts else None,
    }
    (args.work / "lossless" / f"{args.lossless_worker}.json").write_text(json.dumps(record))
    print(f"[lossless {args.lossless_worker}] tau {record['tau']}, engine start {engine_start_s:.0f} s", flush=True)
    llm.llm_engine.engine_core.shutdown()  # now, not at interpreter exit
    return 0


def scan_log(path: Path) -> dict:
    """What the engine log says about CUDA graphs: address-check failures, captures, problems."""
    text = path.read_text(errors="replace") if path.exists() else ""
    problems = [
        line.strip()[:400]
        for line in text.splitlines()
        if PROBLEM_LEVEL.search(line) and (CUDA_GRAPH_WORDS.search(line) or "AssertionError" in line)
    ]
    failures = text.count(ADDRESS_CHECK_FAILURE)
    errors = [line.strip()[:400] for line in text.splitlines() if re.search(r"Error\b|Exception\b", line)]
    return {
        "last_error_lines": errors[-8:],
        "address_check_failures": failures,
        "debug_logging": bool(re.search(r"(^|\) )DEBUG \d", text, re.MULTILINE)),
        "cudagraph_captures_logged": text.count(CAPTURE_DEBUG_LINE),
        "cudagraph_warnings_errors": problems[:20],
        "passed": failures == 0,
    }


def lossless_part(ctx: Any) -> dict:
    args = ctx.args
    script = str(Path(__file__).resolve().parent / "gpu_check.py")
    base = [sys.executable, script, "--out", str(args.out), "--work", str(args.work), "-k", str(args.k)]
    base += ["--lossless-tokens", str(args.lossless_tokens), "--lossless-prompts", str(args.lossless_prompts)]
    base += ["--lossless-dtype", args.lossless_dtype]
    commands = {variant: [*base, "--lossless-worker", variant] for variant in VARIANTS}
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "DEBUG"}
    if not ctx.on_gpu:
        # No per-engine core pinning: vLLM would pin every engine to core 0.
        env.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_OMP_THREADS_BIND="nobind")
    # On the GPU the engines start side by side (compilation is CPU work, 16 cores).
    codes = ctx.run(commands, env, jobs=len(VARIANTS) if ctx.on_gpu else ctx.args.cpu_jobs)
    records = {}
    for variant in VARIANTS:
        path = ctx.work / f"{variant}.json"
        records[variant] = json.loads(path.read_text()) if codes[variant] == 0 and path.exists() else None
    logs = {variant: scan_log(ctx.work / f"{variant}.log") for variant in VARIANTS}
    result = compare(records, codes)
    address_check = {
        "active": ctx.on_gpu,
        "why": "vLLM checks CUDA-graph input addresses at replay when logging at DEBUG; it sees positional "
        "tensors only, so it covers the piecewise graphs, not a FULL graph (called with keywords)"
        if ctx.on_gpu
        else "no CUDA graphs on CPU: the check cannot fire",
        "per_engine": logs,
        "passed": all(scan["passed"] for scan in logs.values()),
    }
    result["cudagraph_address_check"] = address_check
    draft_inputs = {
        v: draft_input_report(ctx.work / f"{v}.draft_inputs.json") for v in VARIANTS if MODES[v.split("-")[0]]
    }
    result["draft_input_address_check"] = {
        "env": DRAFT_INPUT_CHECK_ENV,
        "per_engine": draft_inputs,
        "passed": all(r["violation"] is None for r in draft_inputs.values()),
    }
    result["passed"] = result["passed"] and address_check["passed"] and result["draft_input_address_check"]["passed"]
    result["headline"] = {
        "identical": {v: c["passed"] for v, c in result["identical_to_no_speculation"].items()},
        "tau": {m: [t.get("compiled"), t.get("eager")] for m, t in result["tau_compiled_vs_eager"].items()},
        "address_check_failures": sum(scan["address_check_failures"] for scan in logs.values()),
        "failed_engines": [v for v, code in codes.items() if code != 0],
    }
    return result


def draft_input_report(path: Path) -> dict:
    """The plugin's draft input-address report: which compiled calls it saw, and any move."""
    if not path.exists():
        return {"active": False, "violation": None, "calls": 0}
    report = json.loads(path.read_text())
    return {"active": True, "violation": report.get("violation"), "calls": report.get("calls", 0)}


def differing(outputs: list[list[int]], reference: list[list[int]]) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(outputs, reference, strict=True)) if a != b]


def compare(records: dict[str, dict | None], codes: dict[str, int | None]) -> dict:
    """Identity with no speculation per compilation, and tau compiled vs eager per mode."""
    engines = {
        v: {"exit_code": codes[v], "tau": r and r["tau"], "engine_start_s": r and r["engine_start_s"]}
        for v, r in records.items()
    }
    identical: dict[str, Any] = {}
    for mode in ("td", "ti"):
        for compilation in COMPILATIONS:
            spec, none = records[f"{mode}-{compilation}"], records[f"none-{compilation}"]
            if spec is None or none is None:
                identical[f"{mode}-{compilation}"] = {"passed": False, "error": "engine failed or ran out of time"}
                continue
            differ = differing(spec["batched_token_ids"], none["batched_token_ids"])
            differ_single = differing(spec["single_token_ids"], none["single_token_ids"])
            identical[f"{mode}-{compilation}"] = {
                "prompts": len(none["batched_token_ids"]),
                "differing_batched": differ,
                "differing_single": differ_single,
                "passed": not differ and not differ_single,
            }
    taus: dict[str, Any] = {}
    for mode in ("td", "ti"):
        compiled, eager = records[f"{mode}-compiled"], records[f"{mode}-eager"]
        if not (compiled and eager and compiled["tau"] and eager["tau"]):
            taus[mode] = {"passed": False, "error": "a tau is missing"}
            continue
        relative = abs(compiled["tau"] - eager["tau"]) / eager["tau"]
        taus[mode] = {
            "compiled": compiled["tau"],
            "eager": eager["tau"],
            "relative_difference": relative,
            "passed": relative <= TAU_TOLERANCE,
        }
    baseline = records["none-compiled"], records["none-eager"]
    info = None
    if all(baseline):
        info = baseline[0]["batched_token_ids"] == baseline[1]["batched_token_ids"]
    return {
        "engines": engines,
        "identical_to_no_speculation": identical,
        "tau_compiled_vs_eager": taus,
        "tau_tolerance": TAU_TOLERANCE,
        "no_spec_compiled_equals_eager": info,  # information only: compilation may change float rounding
        "passed": all(c["passed"] for c in identical.values()) and all(t["passed"] for t in taus.values()),
    }
