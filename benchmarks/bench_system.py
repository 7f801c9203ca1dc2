"""System speed of pard2 vs no speculation, in-tree PARD and EAGLE-3, at fixed acceptance.

Dummy weights at real shapes, built from config.json alone (``load_format="dummy"``,
``skip_tokenizer_init=True``, prompts as token ids), so no checkpoint is needed.
Random weights accept almost nothing, so on the GPU the acceptance is fixed with
vLLM's synthetic rejection sampler (``rejection_sample_method="synthetic"`` and
``synthetic_acceptance_length``); the numbers then measure the system's cost at a
known mean acceptance length tau (tau counts the bonus token: 1 + accepted/drafts).
Synthetic rejection is GPU-only in vLLM 0.32; on CPU every method uses standard
rejection and the run is a smoke test of the harness, not a speed claim.

Methods (one engine each, each in its own subprocess so memory is returned):
  none             no speculation
  pard             in-tree PARD: method draft_model + parallel_drafting
  eagle3           EAGLE-3 head, fixed k
  eagle3_schedule  EAGLE-3 with vLLM's num_speculative_tokens_per_batch_size schedule
                   (Model Runner V2 on the GPU, its best setting there; V1 on CPU)
  pard2            this plugin (parallel drafting, target-independent)
  pard2_schedule   this plugin with a batch-size schedule of k (``--pard2-schedule``,
                   vLLM's same option; k = 0 is plain decoding)
Each batch size is generated ``--repeats`` times (default 2, the first pays for JIT
compiles and CUDA-graph capture); the last run is kept.
``--concurrent-starts`` starts every method's engine at once (an 8B engine start is
2-3.5 minutes of mostly CPU-side compilation) and measures them one at a time once all
are up; KV caches are then sized by ``--kv-cache-mib`` on the GPU too.
``--pair TARGET DRAFT`` runs real checkpoints instead of dummy shapes (on CPU, where
synthetic rejection does not exist, a trained tiny pair gives a real tau).

    python benchmarks/bench_system.py --shapes gpu --out results/system       # on the GPU
    python benchmarks/bench_system.py --shapes tiny --batch-sizes 1 2 --output-len 8 --out /tmp/b
Writes OUT/bench_system.json and OUT/bench_system.png (throughput vs per-token latency),
from every method measured in OUT with the same settings: on the GPU, where one command
may run 10 minutes, run one or two ``--methods`` per command into the same OUT.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

METHODS = ("none", "pard", "eagle3", "eagle3_schedule", "pard2", "pard2_schedule")
QWEN3_MASK_TOKEN = 151670  # PARD's mask id for Qwen3 (pard-method.md)


def qwen3_config(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int, **extra) -> dict:
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": 128 if hidden >= 1024 else 32,
        "vocab_size": vocab,
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        **extra,
    }


def eagle3_config(target: dict, draft_vocab: int) -> dict:
    """An EAGLE-3 head for ``target``: one Llama decoder layer at the target's width, reading
    three target layers (vLLM's default ids (2, N//2, N-3) collide on a tiny target)."""
    layers = target["num_hidden_layers"]
    aux_layers = [2, layers // 2, layers - 3] if layers >= 8 else [1, layers // 2, layers - 1]
    return {
        "architectures": ["LlamaForCausalLMEagle3"],
        "model_type": "llama",
        "hidden_size": target["hidden_size"],
        "intermediate_size": target["intermediate_size"],
        "num_hidden_layers": 1,
        "num_attention_heads": target["num_attention_heads"],
        "num_key_value_heads": target["num_key_value_heads"],
        "head_dim": target["head_dim"],
        "vocab_size": target["vocab_size"],
        "draft_vocab_size": draft_vocab,
        "eagle_aux_hidden_state_layer_ids": aux_layers,
        "max_position_embeddings": target["max_position_embeddings"],
        "rms_norm_eps": 1e-6,
        "rope_theta": target["rope_theta"],
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": target["torch_dtype"],
    }


def model_configs(shapes: str) -> dict[str, dict]:
    """config.json of target, PARD draft and EAGLE-3 head. ``gpu``: Qwen3-8B target,
    Qwen3-0.6B-shaped PARD draft, an EAGLE-3 head for Qwen3-8B; ``tiny``: CPU smoke."""
    if shapes == "gpu":
        target = qwen3_config(4096, 12288, 36, 32, 8, 151936)
        draft = qwen3_config(1024, 3072, 28, 16, 8, 151936, pard_token=QWEN3_MASK_TOKEN, spd_type="pard")
        return {"target": target, "draft": draft, "eagle3": eagle3_config(target, 32000)}
    vocab = 1024
    target = qwen3_config(128, 256, 4, 4, 2, vocab, bos_token_id=0, eos_token_id=1, torch_dtype="float32")
    draft = qwen3_config(64, 128, 2, 2, 1, vocab, pard_token=vocab - 2, spd_type="pard", bos_token_id=0, eos_token_id=1)
    draft["torch_dtype"] = "float32"
    return {"target": target, "draft": draft, "eagle3": eagle3_config(target, vocab)}


def target_vocab(paths: dict[str, str]) -> int:
    return json.loads((Path(paths["target"]) / "config.json").read_text())["vocab_size"]


def write_models(shapes: str, root: Path) -> dict[str, str]:
    paths = {}
    for name, config in model_configs(shapes).items():
        path = root / f"{shapes}_{name}"
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(config, indent=2))
        paths[name] = str(path)
    return paths


def parse_schedule(text: str) -> list[tuple[int, int, int]]:
    """ "1-16:8,17-64:4,65-1024:2" -> [(1, 16, 8), (17, 64, 4), (65, 1024, 2)]."""
    ranges = []
    for part in text.split(","):
        span, k = part.split(":")
        first, last = span.split("-")
        ranges.append((int(first), int(last), int(k)))
    return ranges


def speculative_config(method: str, args: argparse.Namespace, paths: dict[str, str], on_gpu: bool) -> dict | None:
    if method == "none":
        return None
    k = args.num_speculative_tokens
    if method in ("pard", "pard2", "pard2_schedule"):
        spec: dict[str, Any] = {"model": paths["draft"], "num_speculative_tokens": k}
        spec.update({"method": "draft_model", "parallel_drafting": True} if method == "pard" else {"method": "pard2"})
        if method == "pard2_schedule":
            spec["num_speculative_tokens_per_batch_size"] = parse_schedule(args.pard2_schedule)
        elif method == "pard2" and args.pard2_fixed_k:
            spec["pard2_adaptive_k"] = False
    else:
        spec = {"method": "eagle3", "model": paths["eagle3"], "num_speculative_tokens": k}
        if method == "eagle3_schedule":
            spec["num_speculative_tokens_per_batch_size"] = parse_schedule(args.eagle3_schedule)
    if on_gpu and args.acceptance_length is not None:
        spec["rejection_sample_method"] = "synthetic"
        spec["synthetic_acceptance_length"] = min(args.acceptance_length, k + 1.0)
    return spec


def engine_kwargs(args: argparse.Namespace, paths: dict[str, str], on_gpu: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "model": paths["target"],
        "load_format": "auto" if args.pair else "dummy",
        "skip_tokenizer_init": True,
        "max_model_len": args.prompt_len + args.output_len + 2 * args.num_speculative_tokens + 16,
        "max_num_seqs": max(args.batch_sizes),
        "max_num_batched_tokens": max(8192, max(args.batch_sizes) * (args.num_speculative_tokens + 1)),
        "enforce_eager": args.eager or not on_gpu,
        "disable_log_stats": False,
        "seed": 0,
    }
    if on_gpu and args.concurrent_starts:
        # Each engine's memory profile would see the others' allocations: fix the KV size.
        kwargs["gpu_memory_utilization"] = args.gpu_memory_utilization / len(args.methods)
        kwargs["kv_cache_memory_bytes"] = args.kv_cache_mib << 20
    elif on_gpu:
        kwargs["gpu_memory_utilization"] = args.gpu_memory_utilization
    else:
        kwargs["kv_cache_memory_bytes"] = args.kv_cache_mib << 20
        kwargs["dtype"] = "float32"
        kwargs["distributed_executor_backend"] = "uni"  # the model in the engine process: one vLLM import less
    return kwargs


def spec_counters(llm: Any) -> tuple[float, float]:
    drafts = accepted = 0.0
    for metric in llm.get_metrics():
        if metric.name == "vllm:spec_decode_num_drafts":
            drafts += metric.value
        elif metric.name == "vllm:spec_decode_num_accepted_tokens":
            accepted += metric.value
    return drafts, accepted


@contextlib.contextmanager
def measurement_turn(args: argparse.Namespace, method: str):
    """With ``--concurrent-starts``: say this engine is up, wait for the parent's go (every
    engine up or its worker gone), then hold OUT/measure.lock so one engine measures at a time."""
    if not args.concurrent_starts:
        yield
        return
    (args.out / f"ready_{method}").touch()
    deadline = time.monotonic() + args.ready_timeout_s
    while not (args.out / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    with open(args.out / "measure.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run_method(method: str, args: argparse.Namespace, paths: dict[str, str]) -> list[dict]:
    """One engine; every batch size ``repeats`` times; the last run of each is kept."""
    import torch
    from vllm import LLM

    on_gpu = torch.cuda.is_available()
    spec = speculative_config(method, args, paths, on_gpu)
    llm = LLM(**engine_kwargs(args, paths, on_gpu), speculative_config=spec)
    with measurement_turn(args, method):
        return measure(llm, method, args, spec, target_vocab(paths))


def measure(llm: Any, method: str, args: argparse.Namespace, spec: dict | None, vocab: int) -> list[dict]:
    import random

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=args.output_len, ignore_eos=True, detokenize=False)
    rng = random.Random(0)
    rows = []
    for batch_size in args.batch_sizes:
        for repeat in range(args.repeats):
            prompts = [
                TokensPrompt(prompt_token_ids=[rng.randrange(2, vocab - 2) for _ in range(args.prompt_len)])
                for _ in range(batch_size)
            ]
            drafts0, accepted0 = spec_counters(llm)
            start = time.perf_counter()
            outputs = llm.generate(prompts, params, use_tqdm=False)
            seconds = time.perf_counter() - start
            drafts1, accepted1 = spec_counters(llm)
            generated = sum(len(out.outputs[0].token_ids) for out in outputs)
            drafts = drafts1 - drafts0
            row = {
                "method": method,
                "batch_size": batch_size,
                "repeat": repeat,
                "seconds": seconds,
                "output_tokens": generated,
                "throughput_tok_s": generated / seconds,
                # Each request's wall time per output token (all requests start together).
                "ms_per_token": 1000.0 * seconds / args.output_len,
                "num_drafts": drafts,
                "num_accepted_tokens": accepted1 - accepted0,
                "tau": (1.0 + (accepted1 - accepted0) / drafts) if drafts else None,
                # Mean engine step (prefill amortised): output_len / tau steps per request.
                "step_ms": 1000.0
                * seconds
                * (1.0 + (accepted1 - accepted0) / drafts if drafts else 1.0)
                / args.output_len,
                "rejection": (spec or {}).get("rejection_sample_method", "standard") if spec else None,
            }
            print(json.dumps(row), flush=True)
        rows.append(row)  # the last repeat
    return rows


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for method in METHODS:
        rows = sorted((r for r in results if r["method"] == method), key=lambda r: r["batch_size"])
        if not rows:
            continue
        ax.plot([r["throughput_tok_s"] for r in rows], [r["ms_per_token"] for r in rows], marker="o", label=method)
        for r in rows:
            ax.annotate(str(r["batch_size"]), (r["throughput_tok_s"], r["ms_per_token"]), fontsize=7)
    # Same orientation as the task benchmark's plot: throughput (x) against latency (y).
    ax.set_xlabel("throughput (output tokens / s)")
    ax.set_ylabel("per-request latency (ms / output token)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--shapes", choices=("gpu", "tiny"), default="gpu")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16, 64, 128])
    parser.add_argument("-k", "--num-speculative-tokens", type=int, default=8)
    parser.add_argument("--acceptance-length", type=float, default=5.0, help="synthetic tau (bonus included), GPU only")
    parser.add_argument("--eagle3-schedule", default="1-16:8,17-64:4,65-4096:2", help="first-last:k,...")
    parser.add_argument(
        "--pard2-schedule", default="1-16:8,17-64:4,65-4096:2", help="first-last:k,... (a k above -k is clamped to it)"
    )
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--eager", action="store_true", help="no CUDA graphs / torch.compile")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument(
        "--kv-cache-mib", type=int, default=64, help="KV-cache budget per engine: CPU, and GPU with --concurrent-starts"
    )
    parser.add_argument(
        "--pair", nargs=2, metavar=("TARGET", "DRAFT"), help="real checkpoints instead of dummy --shapes (no eagle3)"
    )
    parser.add_argument(
        "--concurrent-starts", action="store_true", help="start all engines at once, measure one at a time"
    )
    parser.add_argument("--pard2-fixed-k", action="store_true", help="pard2 at k = -k every step (no adaptive k)")
    parser.add_argument("--ready-timeout-s", type=float, default=900, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pair and any(m.startswith("eagle3") for m in args.methods):
        parser.error("--pair has no EAGLE-3 head: leave eagle3 methods out of --methods")
    return args


def run_key(args: argparse.Namespace, device: str) -> str:
    """Settings that must match for rows of separate invocations to share one table."""
    fields = ("shapes", "num_speculative_tokens", "acceptance_length", "prompt_len", "output_len", "batch_sizes")
    return json.dumps(
        [device, args.eagle3_schedule, args.pard2_schedule, args.eager, args.pair] + [getattr(args, f) for f in fields]
    )


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def worker_main(args: argparse.Namespace) -> int:
    paths = json.loads((args.out / "models.json").read_text())
    rows = run_method(args.worker, args, paths)
    record = {"key": run_key(args, device_name()), "rows": rows}
    (args.out / f"rows_{args.worker}.json").write_text(json.dumps(record, indent=2))
    return 0


def collect_rows(args: argparse.Namespace, device: str) -> list[dict]:
    """Rows of every method measured in OUT with the same settings, this invocation or an
    earlier one (on the GPU each command is time-limited, so methods may run one per call)."""
    rows = []
    for method in METHODS:
        path = args.out / f"rows_{method}.json"
        if path.exists():
            record = json.loads(path.read_text())
            if record.get("key") == run_key(args, device):
                rows.extend(record["rows"])
    return rows


def run_workers(args: argparse.Namespace, forwarded: list[str], on_gpu: bool) -> list[dict]:
    """One subprocess per method, one after the other or (``--concurrent-starts``) all at once;
    returns the methods whose worker failed."""
    for stale in ("go", *(f"ready_{m}" for m in args.methods), *(f"rows_{m}.json" for m in args.methods)):
        (args.out / stale).unlink(missing_ok=True)
    workers: dict[str, subprocess.Popen] = {}
    for method in args.methods:
        env = dict(os.environ)
        if method == "eagle3_schedule" and on_gpu:
            env["VLLM_USE_V2_MODEL_RUNNER"] = "1"  # full CUDA graphs with the schedule (V1 falls back to piecewise)
        print(f"[bench_system] {method} ...", flush=True)
        workers[method] = subprocess.Popen([sys.executable, __file__, *forwarded, "--worker", method], env=env)
        if not args.concurrent_starts:
            workers[method].wait()
    while args.concurrent_starts and not (args.out / "go").exists():
        # Go once every worker still running has its engine up.
        running = [m for m, w in workers.items() if w.poll() is None]
        if all((args.out / f"ready_{m}").exists() for m in running):
            (args.out / "go").touch()
            print(f"[bench_system] engines up: {running}; measuring one at a time", flush=True)
        time.sleep(0.2)
    skipped = []
    for method, worker in workers.items():
        code = worker.wait()
        if code != 0 or not (args.out / f"rows_{method}.json").exists():
            skipped.append({"method": method, "reason": f"worker failed (exit {code}); see its log"})
    return skipped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    import torch

    on_gpu = torch.cuda.is_available()
    device = device_name()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.pair:
        paths = {"target": str(Path(args.pair[0]).resolve()), "draft": str(Path(args.pair[1]).resolve())}
    else:
        paths = write_models(args.shapes, args.out / "models")
    (args.out / "models.json").write_text(json.dumps(paths))
    forwarded = list(argv if argv is not None else sys.argv[1:])
    skipped = run_workers(args, forwarded, on_gpu)
    results = collect_rows(args, device)
    summary = {
        "config": {
            "shapes": args.shapes,
            "models": {"pair": paths} if args.pair else model_configs(args.shapes),
            "concurrent_starts": args.concurrent_starts,
            "device": device,
            "rejection": "synthetic" if on_gpu and args.acceptance_length is not None else "standard",
            "acceptance_length": args.acceptance_length if on_gpu else None,
            "num_speculative_tokens": args.num_speculative_tokens,
            "eagle3_schedule": parse_schedule(args.eagle3_schedule),
            "pard2_schedule": parse_schedule(args.pard2_schedule),
            "prompt_len": args.prompt_len,
            "output_len": args.output_len,
            "batch_sizes": args.batch_sizes,
            "repeats_kept": "last of " + str(args.repeats),
            "tau_note": "tau = 1 + accepted/drafts (counts the bonus token)",
        },
        "results": results,
        "skipped": skipped,
    }
    (args.out / "bench_system.json").write_text(json.dumps(summary, indent=2))
    title = f"{args.shapes} shapes on {summary['config']['device']}, k={args.num_speculative_tokens}, " + (
        f"synthetic tau={args.acceptance_length}" if on_gpu else "standard rejection (CPU smoke, not a speed claim)"
    )
    plot(results, args.out / "bench_system.png", title)
    print(f"[bench_system] wrote {args.out / 'bench_system.json'} and {args.out / 'bench_system.png'}", flush=True)
    return 1 if skipped or not results else 0  # every skipped entry is a failed worker


if __name__ == "__main__":
    sys.exit(main())
