"""Regenerate the embedded tiny PARD-2 pair from scratch, offline, on CPU.

    nice -n 10 python -m vllm_pard2.train.recipe_tiny OUT [--install-assets] [--engine-lock FILE]

Stages (each a plain command, logged with its wall time in ``OUT/recipe.json``):
1. a 2048-token byte-level BPE trained on the Python standard library source;
2. the corpus: every stdlib .py file (subpackages and tests included) except a
   held-out tenth (``confidence.stdlib_files``), tokenised, cut into 256-token windows;
3. the target: a ~4M-parameter, 8-layer Qwen3 trained from scratch on the corpus
   (``ar``), then its confidence: mean top-1 probability on its own greedy
   continuations of held-out files (``confidence``; PARD-2's CAT weights need a
   confident target);
4. distillation data: the target's greedy 128-token continuations (vLLM) of
   stdlib snippets of 16-48 tokens;
5. the AR draft: a ~0.7M-parameter, 1-layer Qwen3 (a forward of k = 8 rows
   costs about 1/6 of one target decode step on CPU; ``forward_cost``, recorded
   in ``recipe.json``) trained on the corpus and the target's responses (``ar``);
6. the PARD drafter: the AR draft adapted with the ``pard`` objective;
7. the PARD-2 drafter: the AR draft adapted with the ``pard2`` objective (CAT
   weights, KD from the target, target features [-1, -3] masked per sample).
PARD and PARD-2 use the same data, steps, K_train = 16 and COD (r 0.7, r_min
0.1), so the two rows of the τ table differ only in the objective.
``--install-assets`` copies the target and the PARD-2 drafter to
``vllm_pard2/assets/tiny_pard2/{target,draft}``. Re-running into the same OUT
reuses finished stages whose config is unchanged, retrains a changed stage and
everything after it, and resumes an interrupted stage from its checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from vllm_pard2.train.confidence import stdlib_files

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "tiny_pard2"
SHIPPED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "warp_model.bin",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
)
PATH_KEYS = ("output_dir", "tokenizer", "init_model", "target_model")  # relative to OUT; configs live in OUT/configs
VOCAB_SIZE = 2048
CORPUS_WINDOW = 256
NUM_PROMPTS = 6000
PROMPT_TOKENS = (16, 48)
RESPONSE_TOKENS = 128
SEQ_LEN = PROMPT_TOKENS[1] + RESPONSE_TOKENS
SAVE_DTYPE = "float16"  # keeps the shipped pair small; load it with dtype="float32" for exact tests

TARGET_SHAPE = dict(
    hidden_size=192,
    intermediate_size=512,
    num_hidden_layers=8,
    num_attention_heads=6,
    num_key_value_heads=2,
    head_dim=32,
)
DRAFT_SHAPE = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
)
PARALLEL_COMMON = dict(
    init_model="draft_ar",
    data=["data/distill.jsonl"],
    seq_len=SEQ_LEN,
    batch_size=8,
    lr=2.0e-3,
    warmup_steps=20,
    para_num=16,
    cod_ratio=0.7,
    cod_min_ratio=0.1,
    save_dtype=SAVE_DTYPE,
    save_every=50,
)
STAGE_CONFIGS = {
    "target": dict(
        objective="ar",
        output_dir="target",
        tokenizer="tokenizer",
        model=TARGET_SHAPE,
        data=["data/corpus.jsonl"],
        seq_len=CORPUS_WINDOW,
        batch_size=16,
        steps=1400,
        lr=2.0e-3,
        warmup_steps=50,
        save_dtype=SAVE_DTYPE,
        save_every=100,
    ),
    "draft_ar": dict(
        objective="ar",
        output_dir="draft_ar",
        tokenizer="tokenizer",
        model=DRAFT_SHAPE,
        data=["data/corpus.jsonl", "data/distill.jsonl"],
        loss_on_prompt=True,
        seq_len=CORPUS_WINDOW,
        batch_size=16,
        steps=2000,
        lr=3.0e-3,
        warmup_steps=30,
        save_dtype=SAVE_DTYPE,
        save_every=100,
    ),
    "draft_pard": dict(objective="pard", output_dir="draft_pard", steps=1500, **PARALLEL_COMMON),
    "draft_pard2": dict(
        objective="pard2",
        output_dir="draft_pard2",
        steps=1500,
        target_model="target",
        ce_alpha=0.1,
        kd_alpha=1.0,
        kd_temperature=1.0,
        pard2_target_layers=[-1, -3],
        pard2_scale=0.02,
        pard2_proj_bias=False,
        target_feat_mask=0.1,
        **PARALLEL_COMMON,
    ),
}


def training_texts() -> list[str]:
    return [p.read_text(encoding="utf-8", errors="ignore") for p in stdlib_files(held_out=False)]


# One change from the PARD-2 stage each (``--ablations``), same data, steps and init:
# trained as ``draft_pard2__NAME`` after the main stages.
ABLATIONS = {
    "no_cat": dict(cat_weighting=False),  # every row weighs 1
    "no_kd": dict(kd_alpha=0.0, ce_alpha=1.0),  # CE on the data only
    "no_feat_mask": dict(target_feat_mask=0.0),  # features never dropped in training
    "depth_norm": dict(cat_depth_norm=True),  # an option: equal weight mass per depth block
    "tempered": dict(cat_weight_power=0.5),  # an option: CAT weights (prod p)^0.5
}


def write_corpus(out: Path, tokenizer, texts: list[str]) -> int:
    n = 0
    with (out / "data" / "corpus.jsonl").open("w") as fh:
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            for start in range(0, len(ids), CORPUS_WINDOW):
                window = ids[start : start + CORPUS_WINDOW]
                if len(window) >= 32:
                    fh.write(json.dumps({"input_ids": window}) + "\n")
                    n += 1
    return n


def write_prompts(out: Path, tokenizer, texts: list[str], seed: int, num_prompts: int = NUM_PROMPTS) -> int:
    """Snippets of the training files that start at a line start, 16-48 tokens long."""
    rng = random.Random(seed)
    files = [t.splitlines(keepends=True) for t in texts]
    files = [lines for lines in files if len(lines) > 20]
    with (out / "data" / "prompts.jsonl").open("w") as fh:
        for _ in range(num_prompts):
            lines = rng.choice(files)
            start = rng.randrange(len(lines) - 10)
            ids = tokenizer("".join(lines[start : start + 12]), add_special_tokens=False)["input_ids"]
            fh.write(json.dumps({"prompt_ids": ids[: rng.randint(*PROMPT_TOKENS)]}) + "\n")
    return num_prompts


@contextlib.contextmanager
def engine_lock(path: str | None):
    """Hold an exclusive flock while a vLLM engine runs (shared machines)."""
    if not path:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_stage(name: str, cmd: list[str], out: Path, log: dict) -> None:
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    started = time.perf_counter()
    subprocess.run(cmd, cwd=out, check=True)
    log["stages"][name] = {"command": " ".join(cmd), "wall_s": round(time.perf_counter() - started, 1)}
    (out / "recipe.json").write_text(json.dumps(log, indent=2))


def install_assets(out: Path, dest: Path = ASSETS) -> None:
    for src_name, dst_name in (("target", "target"), ("draft_pard2", "draft")):
        dst = dest / dst_name
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        for name in SHIPPED_FILES:
            if (out / src_name / name).is_file():
                shutil.copy2(out / src_name / name, dst / name)


def stage_config(name: str, seed: int, threads: int, steps_scale: float = 1.0) -> dict:
    """The trainer config of one stage, as written to ``OUT/configs/NAME.yaml`` (paths relative to it)."""
    base, _, ablation = name.partition("__")
    stage = dict(STAGE_CONFIGS[base], **ABLATIONS.get(ablation, {}))
    if ablation:
        stage["output_dir"] = name
    stage = dict(stage, seed=seed, threads=threads, steps=max(1, round(stage["steps"] * steps_scale)))
    stage = {k: ("../" + v if k in PATH_KEYS else v) for k, v in stage.items()}
    stage["data"] = ["../" + d for d in stage["data"]]
    return stage


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--install-assets", action="store_true", help=f"copy the pair into {ASSETS}")
    parser.add_argument("--engine-lock", default=None, help="flock this file while vLLM generates (shared machines)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every stage's steps (quick runs)")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads per training stage (1 avoids OpenMP stalls on busy CPUs)"
    )
    parser.add_argument("--num-prompts", type=int, default=NUM_PROMPTS, help="distillation prompts")
    parser.add_argument(
        "--ablations", default="", help=f"comma list of PARD-2 ablations to train too: {', '.join(ABLATIONS)}"
    )
    args = parser.parse_args()
    ablations = [a.strip() for a in args.ablations.split(",") if a.strip()]
    unknown = [a for a in ablations if a not in ABLATIONS]
    if unknown:
        parser.error(f"unknown ablations {unknown}; choose from {', '.join(ABLATIONS)}")

    from vllm_pard2.tiny_pair import build_tokenizer

    out = Path(args.out_dir).resolve()
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "configs").mkdir(exist_ok=True)
    started = time.perf_counter()
    log: dict = {"seed": args.seed, "steps_scale": args.steps_scale, "num_prompts": args.num_prompts, "stages": {}}

    t = time.perf_counter()
    tokenizer = build_tokenizer(out / "tokenizer", vocab_size=VOCAB_SIZE)
    texts = training_texts()  # about 28 MB of source, read once for the corpus and the prompts
    log["corpus_windows"] = write_corpus(out, tokenizer, texts)
    log["prompts"] = write_prompts(out, tokenizer, texts, args.seed, args.num_prompts)
    log["stages"]["tokenizer_and_data"] = {"wall_s": round(time.perf_counter() - t, 1)}

    # A stage whose config is unchanged and finished is reused; a changed stage and
    # everything after it is retrained from scratch; an interrupted one resumes.
    # Ablation stages (NAME__ABLATION) come last and do not invalidate each other.
    dirty = False
    previous = json.loads((out / "recipe.json").read_text()) if (out / "recipe.json").is_file() else {}
    train = [sys.executable, "-m", "vllm_pard2.train", "-c"]
    generate = [sys.executable, "-m", "vllm_pard2.train.generate", "--target", "target", "--prompts"]
    generate += ["data/prompts.jsonl", "--out", "data/distill.jsonl", "--max-tokens", str(RESPONSE_TOKENS)]
    measure_confidence = [sys.executable, "-m", "vllm_pard2.train.confidence", "--target", "target", "--out"]
    log["engine_lock_wait_s"] = 0.0
    for name in [*STAGE_CONFIGS, *(f"draft_pard2__{a}" for a in ablations)]:
        text = yaml.safe_dump(stage_config(name, args.seed, args.threads, args.steps_scale), sort_keys=False)
        cfg_path = out / "configs" / f"{name}.yaml"
        if dirty or not cfg_path.is_file() or cfg_path.read_text() != text:
            dirty = dirty or "__" not in name  # ablations depend on the stages above, not on each other
            shutil.rmtree(out / name, ignore_errors=True)
            cfg_path.write_text(text)
        if (out / name / "train_summary.json").is_file():
            log["stages"][name] = dict(previous.get("stages", {}).get(name, {}), reused=True)
        else:
            run_stage(name, train + [f"configs/{name}.yaml"], out, log)
        if name == "target":
            confidence = out / "target" / "confidence.json"
            if not confidence.is_file():
                run_stage("target_confidence", [*measure_confidence, str(confidence)], out, log)
            log["target_confidence"] = json.loads(confidence.read_text())
            distill = out / "data" / "distill.jsonl"
            if dirty:
                distill.unlink(missing_ok=True)  # a new target needs its own responses
            elif line_count(distill) == line_count(out / "data" / "prompts.jsonl"):
                log["stages"]["distill_data"] = dict(previous.get("stages", {}).get("distill_data", {}), reused=True)
                continue
            dirty = True  # generate resumes a partial distill.jsonl
            waited = time.perf_counter()
            with engine_lock(args.engine_lock):
                log["engine_lock_wait_s"] = round(time.perf_counter() - waited, 1)
                run_stage("distill_data", generate, out, log)
    from vllm_pard2.train.forward_cost import measure as forward_cost

    log["draft_forward_cost"] = forward_cost(str(out / "target"), str(out / "draft_pard2"))
    log["total_wall_s"] = round(time.perf_counter() - started, 1)
    log["total_wall_s_excluding_lock_wait"] = round(log["total_wall_s"] - log["engine_lock_wait_s"], 1)
    (out / "recipe.json").write_text(json.dumps(log, indent=2))
    if args.install_assets:
        install_assets(out)
        log["installed"] = str(ASSETS)
        (out / "recipe.json").write_text(json.dumps(log, indent=2))
    print(json.dumps(log, indent=2))


if __name__ == "__main__":
    main()
