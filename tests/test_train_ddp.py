"""Data-parallel training: ``torchrun --nproc_per_node 2`` on CPU (gloo) trains one model per
objective, resumes a 1-process checkpoint, and the PARD-2 result is lossless in vLLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_train_smoke import assert_serves_losslessly

from vllm_pard2.train.config import config_from_dict
from vllm_pard2.train.trainer import Trainer

COMMON = dict(seq_len=40, batch_size=4, steps=2, lr=1e-3, threads=1, para_num=4, cod_ratio=0.7, cod_min_ratio=0.2)


@pytest.fixture(scope="module")
def ddp_data(tiny_pair, tmp_path_factory) -> Path:
    """16 prompt/response records of the tiny tokenizer's ids (stdlib source)."""
    from transformers import AutoTokenizer

    from vllm_pard2.tiny_pair import stdlib_corpus

    tok = AutoTokenizer.from_pretrained(tiny_pair["target"])
    ids = tok("\n".join(stdlib_corpus(3)), add_special_tokens=False)["input_ids"]
    path = tmp_path_factory.mktemp("ddp_data") / "slice.jsonl"
    with path.open("w") as fh:
        for i in range(16):
            chunk = ids[i * 40 : (i + 1) * 40]
            fh.write(json.dumps({"prompt_ids": chunk[:8], "response_ids": chunk[8:]}) + "\n")
    return path


def torchrun(cfg: dict, cfg_path: Path, *overrides: str) -> tuple[dict, str]:
    """Two CPU processes with gloo; returns (train_summary.json, stderr)."""
    cfg_path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "vllm_pard2.train", "-c", str(cfg_path)] + [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((Path(cfg["output_dir"]) / "train_summary.json").read_text()), result.stderr


@pytest.fixture(scope="module")
def ddp_trained(tiny_pair, ddp_data, tmp_path_factory) -> dict[str, tuple[Path, dict, str]]:
    out = tmp_path_factory.mktemp("ddp")
    base = dict(COMMON, data=[str(ddp_data)], init_model=str(tiny_pair["draft_qwen3"]))
    pard = (out / "pard", *torchrun(dict(base, objective="pard", output_dir=str(out / "pard")), out / "pard.yaml"))
    pard2_cfg = dict(
        base,
        objective="pard2",
        output_dir=str(out / "pard2"),
        target_model=str(tiny_pair["target"]),
        pard2_target_layers=[-1, -2],
        target_feat_mask=0.5,
    )
    pard2 = (out / "pard2", *torchrun(pard2_cfg, out / "pard2.yaml"))
    return {"pard": pard, "pard2": pard2}


def test_torchrun_resumes_a_one_process_ar_checkpoint(tiny_pair, ddp_data, tmp_path):
    cfg = dict(COMMON, objective="ar", output_dir=str(tmp_path / "ar"), data=[str(ddp_data)])
    cfg["init_model"] = str(tiny_pair["draft_qwen3"])
    single = Trainer(config_from_dict(cfg)).train()
    assert single["world_size"] == 1 and single["steps"] == 2
    summary, stderr = torchrun(cfg, tmp_path / "ar.yaml", "steps=4")
    assert "world_size=2" in stderr and "resumed_from=2" in stderr
    assert summary["world_size"] == 2 and summary["resumed_from"] == 2 and summary["steps"] == 4
    assert torch.load(tmp_path / "ar" / "checkpoint.pt", weights_only=False)["world_size"] == 2
    log = [json.loads(line) for line in (tmp_path / "ar" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log][-1] == 4 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)


@pytest.mark.parametrize("objective", ["pard", "pard2"])
def test_torchrun_trains_one_model_on_two_processes(ddp_trained, objective):
    _, summary, stderr = ddp_trained[objective]
    assert "world_size=2" in stderr
    assert summary["world_size"] == 2 and summary["steps"] == 2 and summary["attention"] == "dense"
    assert len(summary["final"]["ce_by_depth"]) == COMMON["para_num"]
    assert stderr.count("vllm_pard2.train: world_size=") == 1, "only rank 0 logs"


def test_torchrun_pard2_drafter_is_lossless_in_vllm(tiny_pair, ddp_trained):
    """Greedy pard2 decoding with the 2-process drafter drafts tokens and equals plain greedy."""
    assert_serves_losslessly(tiny_pair["target"], ddp_trained["pard2"][0], k=3)
