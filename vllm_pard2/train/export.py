"""Write a trained draft in the layout the plugin (and vLLM) loads.

- ``config.json``: the HF config plus ``pard_token`` and ``spd_type``; for a
  PARD-2 drafter with target features also ``pard2: true``, ``pard2_scale``,
  ``pard2_proj_bias``, ``pard2_target_dim`` and ``pard2_target_layers``;
- ``model.safetensors``: standard HF keys only;
- ``warp_model.bin``: ``torch.save({"target_proj.weight": W[, "target_proj.bias": b]})``;
- the tokenizer files.
"""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from vllm_pard2.train.trainer import Trainer

WARP_FILE = "warp_model.bin"


def pard_config_keys(trainer: Trainer) -> dict:
    cfg = trainer.cfg
    if cfg.objective == "ar":
        return {}
    keys = {"pard_token": trainer.mask_id, "spd_type": cfg.objective}
    if trainer.target_proj is not None:
        keys.update(
            pard2=True,
            pard2_scale=cfg.pard2_scale,
            pard2_proj_bias=cfg.pard2_proj_bias,
            pard2_target_dim=trainer.target_proj.in_features,
            pard2_target_layers=list(cfg.pard2_target_layers),
        )
    return keys


def export_checkpoint(trainer: Trainer) -> None:
    out = trainer.out
    dtype = getattr(torch, trainer.cfg.save_dtype)
    model = copy.deepcopy(trainer.model).to("cpu", dtype).eval()
    model.set_attn_implementation("sdpa")  # the training-time flex choice is not part of the release
    model.save_pretrained(out, safe_serialization=True)
    trainer.tokenizer.save_pretrained(out)
    cfg_path = out / "config.json"
    hf_cfg = json.loads(cfg_path.read_text())
    hf_cfg.update(pard_config_keys(trainer))
    cfg_path.write_text(json.dumps(hf_cfg, indent=2) + "\n")
    if trainer.target_proj is not None:
        warp = {
            f"target_proj.{k}": v.detach().to("cpu", dtype).clone() for k, v in trainer.target_proj.state_dict().items()
        }
        torch.save(warp, out / WARP_FILE)
