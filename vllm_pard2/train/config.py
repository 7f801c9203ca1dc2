"""Training config: a YAML file read into a dataclass and validated up front.

Every problem found is reported at once, each with the fix, before any model
or data is loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OBJECTIVES = ("ar", "pard", "pard2")
SCHEDULES = ("constant", "cosine")
SAVE_DTYPES = ("float32", "float16", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
ATTENTIONS = ("auto", "flex", "dense")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")
# Keys the pard2 objective alone reads: set for another objective they would be silently ignored.
PARD2_ONLY = (
    "target_model",
    "ce_alpha",
    "kd_alpha",
    "kd_temperature",
    "cat_weighting",
    "cat_depth_norm",
    "cat_weight_power",
    "pard2_target_layers",
    "pard2_scale",
    "pard2_proj_bias",
    "target_feat_mask",
)


class TrainConfigError(ValueError):
    """An invalid training config; the message lists every problem and its fix."""


@dataclass
class TrainConfig:
    objective: str
    output_dir: str
    data: list[str]
    tokenizer: str | None = None  # default: init_model's directory
    init_model: str | None = None  # HF checkpoint to start from
    model: dict[str, Any] | None = None  # Qwen3Config fields for a fresh model (when no init_model)
    seq_len: int = 256
    batch_size: int = 8
    steps: int = 100
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 0  # 0: only at the end
    resume: bool = True
    loss_on_prompt: bool = False
    threads: int | None = None
    save_dtype: str = "float32"
    log_every: int = 10
    device: str = "auto"  # auto: cuda when available, else cpu
    precision: str = "fp32"  # bf16: autocast for the draft, the frozen target loaded in bf16
    attention: str = "auto"  # auto: flex (block-sparse) on cuda, dense bool mask on cpu
    tensorboard: bool = True  # also log to output_dir/tb when tensorboard is installed
    streaming: bool = False  # read data lazily (datasets IterableDataset) instead of tokenising it all first
    length_buckets: int = 1  # > 1: batch examples of similar length within groups of this many batches
    # pard / pard2
    pard_token: int | str | None = None  # id or token string; default "<|mask|>"
    para_num: int = 8  # K_train: depth blocks including the real-token block
    cod_ratio: float = 0.7
    cod_min_ratio: float = 0.2
    # pard2
    target_model: str | None = None
    ce_alpha: float = 0.1
    kd_alpha: float = 1.0
    kd_temperature: float = 1.0
    cat_weighting: bool = True  # false: every valid row weighs 1 (ablation; the method uses CAT)
    cat_depth_norm: bool = False  # true: equal loss-weight mass per depth block (an option; not the method's rule)
    cat_weight_power: float = 1.0  # < 1: tempered CAT weights (prod p)^power (an option; the method's rule is 1)
    pard2_target_layers: list[int] | None = None  # HF hidden_states indices, e.g. [-1, -8, -16, -24]
    pard2_scale: float = 0.02
    pard2_proj_bias: bool = False
    target_feat_mask: float = 0.1  # per-sample probability of dropping the target features
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def uses_masks(self) -> bool:
        return self.objective in ("pard", "pard2")

    @property
    def uses_features(self) -> bool:
        return self.objective == "pard2" and bool(self.pard2_target_layers)


def _problems(cfg: TrainConfig, base: Path) -> list[str]:
    p: list[str] = []
    if cfg.objective not in OBJECTIVES:
        p.append(f"objective: {cfg.objective!r} is not one of {', '.join(OBJECTIVES)}")
    if not cfg.data:
        p.append("data: give at least one JSONL file (records with text, input_ids, or prompt(_ids)+response(_ids))")
    for d in cfg.data:
        if not (base / d).is_file():
            p.append(f"data: file {d!r} does not exist")
        elif Path(d).suffix not in DATA_SUFFIXES:
            p.append(f"data: {d!r} is not one of {', '.join(DATA_SUFFIXES)} (JSONL, JSON, Parquet, Arrow)")
    if not isinstance(cfg.length_buckets, int) or cfg.length_buckets < 1:
        p.append(f"length_buckets: an integer >= 1, got {cfg.length_buckets!r}")
    if cfg.init_model is None and cfg.model is None:
        p.append("init_model / model: set init_model (an HF checkpoint dir) or model (Qwen3Config fields)")
    if cfg.init_model is not None and not (base / cfg.init_model / "config.json").is_file():
        p.append(f"init_model: {cfg.init_model!r} has no config.json")
    if cfg.init_model is None and cfg.tokenizer is None:
        p.append("tokenizer: required when training a fresh model (no init_model)")
    for name in ("seq_len", "batch_size", "steps"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
            p.append(f"{name}: must be an integer >= 1, got {getattr(cfg, name)!r}")
    if not (isinstance(cfg.lr, (int, float)) and cfg.lr > 0):
        p.append(f"lr: must be > 0, got {cfg.lr!r}")
    if cfg.lr_schedule not in SCHEDULES:
        p.append(f"lr_schedule: {cfg.lr_schedule!r} is not one of {', '.join(SCHEDULES)}")
    if cfg.save_dtype not in SAVE_DTYPES:
        p.append(f"save_dtype: {cfg.save_dtype!r} is not one of {', '.join(SAVE_DTYPES)}")
    p += _runtime_problems(cfg)
    if cfg.uses_masks:
        if not isinstance(cfg.para_num, int) or cfg.para_num < 2:
            p.append(f"para_num: K_train must be an integer >= 2 for {cfg.objective}, got {cfg.para_num!r}")
        if not 0 < cfg.cod_ratio <= 1:
            p.append(f"cod_ratio: must be in (0, 1], got {cfg.cod_ratio!r} (paper: 0.7)")
        if not 0 <= cfg.cod_min_ratio <= 1:
            p.append(f"cod_min_ratio: must be in [0, 1], got {cfg.cod_min_ratio!r} (PARD 0.2, PARD-2 0.1)")
    if cfg.objective in OBJECTIVES and cfg.objective != "pard2":
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
        for name in PARD2_ONLY:
            if getattr(cfg, name) != defaults[name]:
                p.append(f"{name}: only the pard2 objective uses it; remove it or set objective: pard2")
    if cfg.objective == "pard2":
        if cfg.target_model is None:
            p.append("target_model: pard2 distils from the target; set target_model to its checkpoint dir")
        elif not (base / cfg.target_model / "config.json").is_file():
            p.append(f"target_model: {cfg.target_model!r} has no config.json")
        if cfg.kd_temperature <= 0:
            p.append(f"kd_temperature: must be > 0, got {cfg.kd_temperature!r}")
        if cfg.ce_alpha < 0 or cfg.kd_alpha < 0 or cfg.ce_alpha + cfg.kd_alpha == 0:
            p.append("ce_alpha / kd_alpha: must be >= 0 and not both 0 (paper: 0.1 / 1.0)")
        if cfg.pard2_target_layers is not None and (
            not isinstance(cfg.pard2_target_layers, list)
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in cfg.pard2_target_layers)
        ):
            p.append("pard2_target_layers: a list of HF hidden_states indices such as [-1, -8], or null for TI-only")
        if not (isinstance(cfg.cat_weight_power, (int, float)) and 0 < cfg.cat_weight_power <= 1):
            p.append(
                f"cat_weight_power: must be in (0, 1] (1 = the method's CAT weights), got {cfg.cat_weight_power!r}"
            )
        if not 0 <= cfg.target_feat_mask < 1:
            p.append(f"target_feat_mask: drop probability in [0, 1), got {cfg.target_feat_mask!r}")
    return p


def _runtime_problems(cfg: TrainConfig) -> list[str]:
    """device / precision / attention: checked before any model loads."""
    p = []
    for name, choices in (("device", DEVICES), ("precision", PRECISIONS), ("attention", ATTENTIONS)):
        if getattr(cfg, name) not in choices:
            p.append(f"{name}: {getattr(cfg, name)!r} is not one of {', '.join(choices)}")
    if p:
        return p
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        p.append("device: 'cuda' but torch sees no GPU; use device: auto or cpu")
    if cfg.attention == "flex" and resolve_device_type(cfg.device) == "cpu":
        p.append("attention: 'flex' trains on GPU only (torch has no FlexAttention backward on CPU); use auto or dense")
    return p


def resolve_device_type(device: str) -> str:
    """'cuda' or 'cpu' for a config ``device`` value."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read, normalise and validate a YAML config; relative paths are relative to the file."""
    import yaml

    path = Path(path)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise TrainConfigError(f"{path}: the top level must be a mapping of keys to values")
    raw.update(overrides or {})
    return config_from_dict(raw, base=path.parent)


def config_from_dict(raw: dict[str, Any], base: Path = Path(".")) -> TrainConfig:
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"extra"}
    unknown = [k for k in raw if k not in names]
    problems = []
    for key in unknown:
        close = difflib.get_close_matches(key, names, n=1)
        problems.append(f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    missing = [k for k in ("objective", "output_dir", "data") if k not in raw]
    problems += [f"{k}: required" for k in missing]
    if problems:
        raise TrainConfigError("Invalid training config:\n  - " + "\n  - ".join(problems))
    raw = dict(raw)
    if isinstance(raw["data"], str):
        raw["data"] = [raw["data"]]
    cfg = TrainConfig(**raw)
    problems = _problems(cfg, base)
    if problems:
        raise TrainConfigError("Invalid training config:\n  - " + "\n  - ".join(problems))
    for name in ("output_dir", "tokenizer", "init_model", "target_model"):
        if getattr(cfg, name) is not None:
            setattr(cfg, name, str(base / getattr(cfg, name)))
    cfg.data = [str(base / d) for d in cfg.data]
    return cfg
