"""Target-dependent mode needs the target's final norm when HF index -1 is
among ``pard2_target_layers``; the front end checks that it can be found
before choosing TD, with the same function the proposer uses at load.

The mismatched target is a tiny Nemotron-H (a vLLM architecture with
EAGLE-3 hidden-state capture whose final norm is ``norm_f``): a config and a
tokenizer only, since no engine starts (``create_engine_config`` reads no
weights).
"""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from torch import nn

from vllm_pard2.checkpoint import find_final_norm
from vllm_pard2.config import Pard2ConfigError

NUM_LAYERS = 4  # the tiny pair's target depth; draft_td reads layers [-1, -2, -4] of width 128


@pytest.fixture(scope="module")
def norm_f_target(tiny_pair, tmp_path_factory):
    from transformers import NemotronHConfig

    out = tmp_path_factory.mktemp("nemotron_h_target")
    for path in tiny_pair["target"].iterdir():
        if "token" in path.name or path.name in ("generation_config.json", "chat_template.jinja"):
            shutil.copy(path, out / path.name)
    NemotronHConfig(
        vocab_size=1024,
        hidden_size=128,
        layers_block_type=["mamba", "attention", "mlp", "attention"],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=256,
        ssm_state_size=16,
        mamba_num_heads=4,
        mamba_head_dim=32,
        n_groups=1,
        chunk_size=64,
        max_position_embeddings=512,
        architectures=["NemotronHForCausalLM"],
    ).save_pretrained(out)
    return out


def speculative_config(target, draft, **extra):
    from vllm.engine.arg_utils import EngineArgs

    spec = {"method": "pard2", "model": str(draft), "num_speculative_tokens": 4, **extra}
    args = EngineArgs(model=str(target), speculative_config=spec, dtype="float32", max_model_len=256)
    return args.create_engine_config().speculative_config


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_auto_falls_back_to_ti_naming_the_final_norm(tiny_pair, norm_f_target):
    # vLLM (re)configures its logger tree, dropping handlers, on the first
    # config build of a process; listen from the second one on.
    speculative_config(norm_f_target, tiny_pair["draft_td"], pard2_mode="target_independent")
    records = _Records()
    logger = logging.getLogger("vllm.vllm_pard2.checkpoint")
    logger.addHandler(records)
    try:
        spec = speculative_config(norm_f_target, tiny_pair["draft_td"])
    finally:
        logger.removeHandler(records)
    assert spec.pard2_mode == "target_independent"
    (line,) = [m for m in records.messages if m.startswith("pard2: target-")]
    assert "target-independent mode, because" in line
    assert "NemotronHForCausalLM has no final norm" in line


def test_forced_td_fails_naming_the_final_norm(tiny_pair, norm_f_target):
    with pytest.raises(Pard2ConfigError, match="impossible") as info:
        speculative_config(norm_f_target, tiny_pair["draft_td"], pard2_mode="target_dependent")
    assert "NemotronHForCausalLM has no final norm pard2 can find" in str(info.value)
    assert "HF index -1" in str(info.value)


def test_norm_not_needed_without_index_minus_one(tiny_pair, norm_f_target, tmp_path):
    """Layers that stop before the final norm leave only the norm check out:
    the other blockers (here none) decide."""
    import json

    draft = tmp_path / "draft_td_no_norm"
    shutil.copytree(tiny_pair["draft_td"], draft)
    config = json.loads((draft / "config.json").read_text())
    (draft / "config.json").write_text(json.dumps({**config, "pard2_target_layers": [-2, -3, -4]}))
    assert speculative_config(norm_f_target, draft).pard2_mode == "target_dependent"


def test_same_target_family_keeps_td(tiny_pair):
    assert speculative_config(tiny_pair["target"], tiny_pair["draft_td"]).pard2_mode == "target_dependent"


def _meta_skeleton(config):
    from transformers import AutoModel

    with torch.device("meta"):
        return AutoModel.from_config(config)


def test_finder_on_weightless_skeletons(tiny_pair, norm_f_target):
    from transformers import AutoConfig

    from vllm_pard2.proposer.pard2_proposer import _final_norm

    qwen3 = _meta_skeleton(AutoConfig.from_pretrained(tiny_pair["target"]))
    assert find_final_norm(qwen3, NUM_LAYERS) is qwen3.norm
    assert _final_norm(qwen3, NUM_LAYERS) is qwen3.norm  # the proposer's lookup is the same function
    assert find_final_norm(qwen3, NUM_LAYERS + 1) is None  # depth must match the config
    nemotron = _meta_skeleton(AutoConfig.from_pretrained(norm_f_target))
    assert find_final_norm(nemotron, NUM_LAYERS) is None
    with pytest.raises(RuntimeError, match="cannot find the final norm"):
        _final_norm(nemotron, NUM_LAYERS)


def test_finder_refuses_ambiguous_trees():
    """Two decoders of the same depth (say a text and a vision stack): no guess."""

    def stack() -> nn.Module:
        module = nn.Module()
        module.layers = nn.ModuleList(nn.Identity() for _ in range(NUM_LAYERS))
        module.norm = nn.LayerNorm(8)
        return module

    root = nn.Module()
    root.text, root.vision = stack(), stack()
    assert find_final_norm(root, NUM_LAYERS) is None
    assert find_final_norm(root.text, NUM_LAYERS) is root.text.norm
