"""Smoke test of the trainer: each objective trains a few steps on a tiny slice,
exports the plugin layout, and the PARD / PARD-2 results run in vLLM with pard2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from vllm_pard2.train.config import config_from_dict
from vllm_pard2.train.trainer import Trainer

from conftest import engine_kwargs, shutdown
from engines import spec_counters

FRESH_SHAPE = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16
)
PROMPTS = 3
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def slice_data(tiny_pair, tmp_path_factory) -> Path:
    """24 prompt/response records cut from stdlib source (token ids of the tiny tokenizer)."""
    from transformers import AutoTokenizer

    from vllm_pard2.tiny_pair import stdlib_corpus

    tok = AutoTokenizer.from_pretrained(tiny_pair["target"])
    ids = tok("\n".join(stdlib_corpus(3)), add_special_tokens=False)["input_ids"]
    path = tmp_path_factory.mktemp("train_data") / "slice.jsonl"
    with path.open("w") as fh:
        for i in range(24):
            chunk = ids[i * 40 : (i + 1) * 40]
            fh.write(json.dumps({"prompt_ids": chunk[:8], "response_ids": chunk[8:]}) + "\n")
    return path


def train(tmp_path: Path, data: Path, **fields) -> tuple[Path, dict]:
    raw = dict(output_dir=str(tmp_path), data=[str(data)], seq_len=40, batch_size=4, steps=2, lr=1e-3)
    raw.update(fields)
    return tmp_path, Trainer(config_from_dict(raw)).train()


@pytest.fixture(scope="module")
def trained(tiny_pair, slice_data, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("trained")
    common = dict(init_model=str(tiny_pair["draft_qwen3"]), para_num=4, cod_ratio=0.7, cod_min_ratio=0.2)
    pard, _ = train(out / "pard", slice_data, objective="pard", **common)
    pard2, _ = train(
        out / "pard2",
        slice_data,
        objective="pard2",
        target_model=str(tiny_pair["target"]),
        pard2_target_layers=[-1, -2],
        target_feat_mask=0.5,
        **common,
    )
    return {"pard": pard, "pard2": pard2}


def test_ar_cli_trains_a_fresh_model_and_resumes(tiny_pair, slice_data, tmp_path):
    cfg = dict(
        objective="ar",
        output_dir="ar",
        tokenizer=str(tiny_pair["target"]),
        model=FRESH_SHAPE,
        data=[str(slice_data)],
        seq_len=40,
        batch_size=4,
        steps=2,
        loss_on_prompt=True,
    )
    (tmp_path / "ar.yaml").write_text(yaml.safe_dump(cfg))
    cli = [sys.executable, "-m", "vllm_pard2.train", "-c", str(tmp_path / "ar.yaml")]
    first = subprocess.run(cli, capture_output=True, text=True, check=True)
    assert '"steps": 2' in first.stdout
    second = subprocess.run(cli + ["--set", "steps=3"], capture_output=True, text=True, check=True)
    summary = json.loads((tmp_path / "ar" / "train_summary.json").read_text())
    assert summary["resumed_from"] == 2 and summary["steps"] == 3, second.stdout
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ar")
    assert model.config.hidden_size == FRESH_SHAPE["hidden_size"]
    assert "pard_token" not in json.loads((tmp_path / "ar" / "config.json").read_text())


def test_cli_reports_config_errors(tmp_path):
    (tmp_path / "bad.yaml").write_text("objective: pard3\noutput_dir: o\ndata: missing.jsonl\n")
    result = subprocess.run(
        [sys.executable, "-m", "vllm_pard2.train", "-c", str(tmp_path / "bad.yaml")], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "pard3" in result.stderr and "missing.jsonl" in result.stderr


def test_bf16_autocast_step_tracks_fp32(tiny_pair, slice_data, tmp_path):
    """precision: bf16 autocasts the draft (fp32 master weights) and loads the frozen target in
    bf16 on the training device; the first-step loss stays close to the fp32 one."""
    common = dict(
        objective="pard2",
        init_model=str(tiny_pair["draft_qwen3"]),
        target_model=str(tiny_pair["target"]),
        pard2_target_layers=[-1, -2],
        para_num=4,
        device="cpu",
        resume=False,
    )
    losses = {}
    for precision in ("fp32", "bf16"):
        raw = dict(output_dir=str(tmp_path / precision), data=[str(slice_data)], seq_len=40, batch_size=4, steps=1)
        trainer = Trainer(config_from_dict(dict(raw, precision=precision, **common)))
        assert trainer.target.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
        assert trainer.model.dtype == torch.float32 and trainer.target.device.type == "cpu"
        summary = trainer.train()
        assert summary["precision"] == precision
        losses[precision] = summary["final"]["loss"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.03)
    assert losses["bf16"] != losses["fp32"], "bf16 autocast did not change the arithmetic"


def test_export_layout(tiny_pair, trained):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    pard_cfg = json.loads((trained["pard"] / "config.json").read_text())
    assert pard_cfg["spd_type"] == "pard" and pard_cfg["pard_token"] == 3
    assert not (trained["pard"] / "warp_model.bin").exists()

    cfg = json.loads((trained["pard2"] / "config.json").read_text())
    target_hidden = AutoModelForCausalLM.from_pretrained(tiny_pair["target"]).config.hidden_size
    assert cfg["spd_type"] == "pard2" and cfg["pard2"] is True and cfg["pard_token"] == 3
    assert cfg["pard2_scale"] == 0.02 and cfg["pard2_proj_bias"] is False
    assert cfg["pard2_target_layers"] == [-1, -2] and cfg["pard2_target_dim"] == 2 * target_hidden
    expected_keys = set(AutoModelForCausalLM.from_pretrained(tiny_pair["draft_qwen3"]).state_dict())
    with safe_open(trained["pard2"] / "model.safetensors", "pt") as fh:
        assert set(fh.keys()) == expected_keys
    warp = torch.load(trained["pard2"] / "warp_model.bin", weights_only=True)
    assert set(warp) == {"target_proj.weight"}
    assert tuple(warp["target_proj.weight"].shape) == (cfg["hidden_size"], cfg["pard2_target_dim"])
    assert (trained["pard2"] / "tokenizer.json").is_file()


def hf_greedy(target: Path, prompts: list[list[int]]) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).eval()
    outputs = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            for _ in range(MAX_TOKENS):
                ids = torch.cat([ids, model(input_ids=ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        outputs.append(ids[0, len(prompt) :].tolist())
    return outputs


def assert_serves_losslessly(target: Path, draft: Path, k: int, **spec_extra) -> None:
    """Greedy pard2 decoding with ``draft`` drafts tokens and equals plain (HF) greedy."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = [[20 + i, 40 + 3 * i, 77, 90 + i, 5 + i] for i in range(PROMPTS)]
    spec = {"method": "pard2", "model": str(draft), "num_speculative_tokens": k, **spec_extra}
    llm = LLM(model=str(target), speculative_config=spec, **engine_kwargs())
    try:
        outs = llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts],
            SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True),
            use_tqdm=False,
        )
        counters, _ = spec_counters(llm)
    finally:
        shutdown(llm)
    assert counters["vllm:spec_decode_num_drafts"] > 0
    assert [list(o.outputs[0].token_ids) for o in outs] == hf_greedy(target, prompts)


def test_weight_mass_by_depth_is_logged(tiny_pair, slice_data, trained, tmp_path):
    """Each run records where its loss weight went per depth block (train log, summary):
    PARD weighs every row alike; PARD-2's CAT weights shrink with depth on this unsure
    target; ``cat_depth_norm`` gives every depth block the same mass."""
    mass = {}
    for objective, out in trained.items():
        summary = json.loads((out / "train_summary.json").read_text())
        mass[objective] = summary["weight_mass_by_depth"]
        assert len(mass[objective]) == 4 and sum(mass[objective]) == pytest.approx(1.0, abs=1e-4)
        logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        assert sum(logged[-1]["weight_mass_by_depth"]) == pytest.approx(1.0, abs=1e-4)
    assert mass["pard2"][0] > mass["pard"][0] and mass["pard2"][3] < mass["pard"][3]
    _, summary = train(
        tmp_path / "norm",
        slice_data,
        objective="pard2",
        init_model=str(tiny_pair["draft_qwen3"]),
        target_model=str(tiny_pair["target"]),
        para_num=4,
        cod_ratio=1.0,
        cod_min_ratio=1.0,
        cat_depth_norm=True,
    )
    assert summary["weight_mass_by_depth"] == pytest.approx([0.25] * 4, abs=1e-4)


@pytest.mark.parametrize("objective", ["pard", "pard2"])
def test_trained_drafter_runs_in_vllm(tiny_pair, trained, objective):
    """Greedy pard2 decoding with the trained drafter drafts tokens and equals plain greedy."""
    assert_serves_losslessly(tiny_pair["target"], trained[objective], k=3)


def test_shipped_tiny_pair_has_the_plugin_layout():
    """The embedded pair (vllm_pard2/assets/tiny_pard2) is what recipe_tiny exports."""
    from transformers import AutoConfig

    assets = Path(__file__).resolve().parent.parent / "vllm_pard2" / "assets" / "tiny_pard2"
    target = AutoConfig.from_pretrained(assets / "target")
    draft = json.loads((assets / "draft" / "config.json").read_text())
    assert draft["spd_type"] == "pard2" and draft["pard2"] is True
    assert draft["vocab_size"] == target.vocab_size
    assert draft["pard2_target_dim"] == len(draft["pard2_target_layers"]) * target.hidden_size
    warp = torch.load(assets / "draft" / "warp_model.bin", weights_only=True)
    assert tuple(warp["target_proj.weight"].shape) == (draft["hidden_size"], draft["pard2_target_dim"])
    size = sum(p.stat().st_size for p in assets.rglob("*") if p.is_file())
    assert size <= 40e6, f"the embedded pair grew to {size / 1e6:.1f} MB (the limit is 40 MB)"


def test_recipe_stages_train_and_serve(tiny_pair, slice_data, tmp_path):
    """recipe_tiny's own stage configs (shapes, objectives, loss settings), cut to 2 steps
    on a slice, train in order; the PARD-2 drafter then serves in TD mode, losslessly.
    The PARD stages distil against the sharpened test target (exact greedy comparisons)."""
    from vllm_pard2.train.recipe_tiny import STAGE_CONFIGS, stage_config

    out = tmp_path / "recipe"
    (out / "configs").mkdir(parents=True)
    small = dict(seq_len=40, batch_size=4, steps=2, save_every=0, threads=None)
    paths = {"tokenizer": str(tiny_pair["target"]), "data": [str(slice_data)], "target_model": str(tiny_pair["target"])}
    summaries = {}
    for name in STAGE_CONFIGS:
        cfg = stage_config(name, seed=0, threads=1)
        cfg.update(small, output_dir=str(out / name), **{k: v for k, v in paths.items() if k in cfg})
        if "init_model" in cfg:
            cfg["init_model"] = str(out / "draft_ar")
        summaries[name] = Trainer(config_from_dict(cfg)).train()
        assert summaries[name]["objective"] == STAGE_CONFIGS[name]["objective"]
    draft_cfg = json.loads((out / "draft_pard2" / "config.json").read_text())
    assert draft_cfg["num_hidden_layers"] == STAGE_CONFIGS["draft_ar"]["model"]["num_hidden_layers"]
    assert draft_cfg["pard2_target_layers"] == STAGE_CONFIGS["draft_pard2"]["pard2_target_layers"]

    assert_serves_losslessly(
        tiny_pair["target"], out / "draft_pard2", k=4, pard2_mode="target_dependent", pard2_adaptive_k=False
    )


def test_confidence_prompts_come_from_held_out_files():
    """The target's confidence is measured on files the recipe never trains on."""
    from vllm_pard2.train.confidence import stdlib_files

    train, held_out = set(stdlib_files(held_out=False)), set(stdlib_files(held_out=True))
    assert held_out and train and not train & held_out
    assert 0.05 < len(held_out) / (len(train) + len(held_out)) < 0.2
