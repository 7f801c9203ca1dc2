"""The PARD-2 checkpoint layout: config keys, the ``target_proj`` file, and
which serving mode a checkpoint and a target allow.

A published PARD-2 drafter is a plain Hugging Face causal LM plus
``warp_model.bin`` (``torch.save`` of ``{"target_proj.weight", ["target_proj.bias"]}``)
and these ``config.json`` keys: ``pard2``/``spd_type``, ``pard_token``,
``pard2_scale`` (fallbacks ``pard_scale``, ``feat_scale``; default 0.02),
``pard2_proj_bias`` (fallback ``proj_bias``; default false), ``pard2_target_dim``
(projection input width = len(layers) x target hidden; default 4096) and
``pard2_target_layers`` (Hugging Face ``output_hidden_states`` indices; required
for target-dependent mode).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vllm_pard2.config import PARD2_MODES, Pard2ConfigError

AUTO, TARGET_DEPENDENT, TARGET_INDEPENDENT = PARD2_MODES
PROJECTION_FILES = ("warp_model.safetensors", "warp_model.bin")
DEFAULT_SCALE = 0.02
DEFAULT_TARGET_DIM = 4096
# Names of the final norm beside the decoder's `layers` for which Hugging Face's
# hidden_states[-1] is norm(residual stream after the last layer), checked against
# the HF reference by the TD oracle test (Llama / Qwen families). Another name
# (Nemotron-H's `norm_f`, GPT-2's `ln_f`, ...) is not assumed to mean the same.
FINAL_NORM_NAMES = ("norm",)


@dataclass(frozen=True)
class Pard2Spec:
    """The PARD-2 keys of a draft config, with the reference fallbacks applied."""

    is_pard2: bool
    scale: float
    proj_bias: bool
    target_dim: int
    target_layers: tuple[int, ...] | None


def _first(config: Any, names: tuple[str, ...], default: Any) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def read_pard2_spec(draft_hf_config: Any) -> Pard2Spec:
    layers = getattr(draft_hf_config, "pard2_target_layers", None)
    return Pard2Spec(
        is_pard2=bool(getattr(draft_hf_config, "pard2", False))
        or getattr(draft_hf_config, "spd_type", None) == "pard2",
        scale=float(_first(draft_hf_config, ("pard2_scale", "pard_scale", "feat_scale"), DEFAULT_SCALE)),
        proj_bias=bool(_first(draft_hf_config, ("pard2_proj_bias", "proj_bias"), False)),
        target_dim=int(_first(draft_hf_config, ("pard2_target_dim",), DEFAULT_TARGET_DIM)),
        target_layers=tuple(int(i) for i in layers) if layers else None,
    )


def find_projection_file(draft_model: str) -> Path | None:
    """``warp_model.safetensors`` or ``warp_model.bin`` beside the draft weights.

    For a Hugging Face repo id the file is looked up in the local cache and,
    unless the hub is offline, downloaded: vLLM's own downloader skips ``.bin``
    files when safetensors exist, so it never fetches ``warp_model.bin``.
    """
    local = Path(os.path.expanduser(draft_model))
    if local.is_dir():
        return next((local / name for name in PROJECTION_FILES if (local / name).is_file()), None)
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:
        return None
    for name in PROJECTION_FILES:
        cached = try_to_load_from_cache(draft_model, name)
        if isinstance(cached, str):
            return Path(cached)
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return None
    for name in PROJECTION_FILES:
        try:
            return Path(hf_hub_download(draft_model, name))
        except Exception:
            continue
    return None


def load_projection(path: Path, spec: Pard2Spec, draft_hidden: int) -> dict[str, torch.Tensor]:
    """Read and check ``target_proj``; a malformed file is a ``Pard2ConfigError``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise Pard2ConfigError(f"pard2: cannot read the target projection '{path}': {exc}") from exc
    if not isinstance(state, dict) or "target_proj.weight" not in state:
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise Pard2ConfigError(
            f"pard2: '{path}' must hold a state dict with 'target_proj.weight' "
            f"(and optionally 'target_proj.bias'); found {keys}."
        )
    weight = state["target_proj.weight"]
    expected = (draft_hidden, spec.target_dim)
    if tuple(weight.shape) != expected:
        raise Pard2ConfigError(
            f"pard2: target_proj.weight in '{path}' has shape {tuple(weight.shape)}, but the draft "
            f"config needs {expected} (draft hidden size, pard2_target_dim)."
        )
    bias = state.get("target_proj.bias")
    if spec.proj_bias and bias is None:
        raise Pard2ConfigError(f"pard2: the draft config sets pard2_proj_bias but '{path}' has no target_proj.bias.")
    if bias is not None and tuple(bias.shape) != (draft_hidden,):
        raise Pard2ConfigError(
            f"pard2: target_proj.bias in '{path}' has shape {tuple(bias.shape)}, expected ({draft_hidden},)."
        )
    out = {"weight": weight}
    if spec.proj_bias and bias is not None:
        out["bias"] = bias
    return out


def target_dependent_blockers(
    spec: Pard2Spec,
    projection: Path | None,
    target_hidden: int,
    target_num_layers: int,
    target_supports_aux: bool,
    target_arch: str,
) -> list[str]:
    """Why target-dependent drafting cannot run on this target (empty: it can)."""
    reasons = []
    if spec.target_layers is None:
        reasons.append("the draft config has no 'pard2_target_layers'")
    else:
        bad = [i for i in spec.target_layers if not -(target_num_layers + 1) <= i <= target_num_layers]
        if bad:
            reasons.append(
                f"pard2_target_layers {list(bad)} are outside the target's hidden states "
                f"(it has {target_num_layers} layers: indices -{target_num_layers + 1}..{target_num_layers})"
            )
        needed = len(spec.target_layers) * target_hidden
        if needed != spec.target_dim:
            reasons.append(
                f"pard2_target_dim is {spec.target_dim} but {len(spec.target_layers)} target layers x "
                f"target hidden size {target_hidden} = {needed}"
            )
    if projection is None:
        reasons.append(f"no target projection file ({' or '.join(PROJECTION_FILES)}) beside the draft")
    if not target_supports_aux:
        reasons.append(f"the target architecture {target_arch} cannot return intermediate hidden states in vLLM")
    return reasons


def needs_final_norm(target_layers: tuple[int, ...], num_layers: int) -> bool:
    """HF index -1 (= num_layers) is the state after the final norm, which
    vLLM does not capture: pard2 applies the target's final norm itself."""
    return any(i in (-1, num_layers) for i in target_layers)


def find_final_norm(model: nn.Module, num_layers: int) -> nn.Module | None:
    """The target's final norm: a ``FINAL_NORM_NAMES`` child of the one module
    that holds the ``num_layers`` decoder ``layers``; None if there is no such
    module, or more than one.

    The search ignores the path above that module, so it finds the same norm
    in vLLM's model (``model.norm``, ``language_model.model.norm``) and in the
    weightless Hugging Face skeleton the front end inspects; the proposer and
    the front-end mode choice call this one function.
    """
    root = model.get_language_model() if hasattr(model, "get_language_model") else model
    found = []
    for module in root.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) == num_layers:
            norm = next(
                (getattr(module, n) for n in FINAL_NORM_NAMES if isinstance(getattr(module, n, None), nn.Module)), None
            )
            if norm is not None:
                found.append(norm)
    return found[0] if len(found) == 1 else None


def final_norm_blocker(target_text_config: Any, trust_remote_code: bool, target_arch: str) -> str | None:
    """Why the front end cannot find the target's final norm (None: it can).

    Runs before any engine starts, so no vLLM model exists yet. Building one,
    even on the meta device, needs vLLM's distributed groups and a full
    ``VllmConfig``; instead build the Hugging Face decoder on the meta device
    (module tree only: no weights, no memory, under a second for 8B models).
    vLLM loads weights by their Hugging Face names, so the norm beside the
    decoder layers has the same name there; ``find_final_norm`` makes the same
    decision on both trees.
    """
    from transformers import AutoModel

    num_layers = target_text_config.num_hidden_layers
    try:
        with torch.device("meta"):
            skeleton = AutoModel.from_config(target_text_config, trust_remote_code=trust_remote_code)
    except Exception as exc:
        return f"the target architecture {target_arch} cannot be inspected for its final norm ({type(exc).__name__}: {exc})"
    if find_final_norm(skeleton, num_layers) is None:
        return (
            f"the target architecture {target_arch} has no final norm pard2 can find (pard2_target_layers "
            f"includes HF index -1, the state after the final norm; pard2 looks for a module named "
            f"{' or '.join(repr(n) for n in FINAL_NORM_NAMES)} beside the {num_layers} decoder layers)"
        )
    return None


def resolve_mode(requested: str | None, blockers: list[str], draft_name: str) -> str:
    """``auto`` picks target-dependent when nothing blocks it; forcing it with a
    blocker is an error naming every mismatch."""
    requested = requested or AUTO
    if requested == TARGET_INDEPENDENT:
        return TARGET_INDEPENDENT
    if not blockers:
        return TARGET_DEPENDENT
    if requested == TARGET_DEPENDENT:
        raise Pard2ConfigError(
            f"pard2_mode 'target_dependent' is impossible with draft '{draft_name}': "
            + "; ".join(blockers)
            + ". Use a PARD-2 drafter trained for this target family, or pard2_mode 'auto' / 'target_independent'."
        )
    return TARGET_INDEPENDENT


def choose_mode(speculative_config: Any) -> str:
    """Resolve ``pard2_mode`` for a built pard2 ``SpeculativeConfig`` (front end,
    before any engine starts); logs the choice and, for auto, why TD is off."""
    from vllm.logger import init_logger
    from vllm.model_executor.models import ModelRegistry
    from vllm.model_executor.models.interfaces import supports_eagle3

    logger = init_logger(f"vllm.{__name__}")
    draft_config = speculative_config.draft_model_config
    target_config = speculative_config.target_model_config
    spec = read_pard2_spec(draft_config.hf_config)
    projection = find_projection_file(str(speculative_config.model))
    archs = list(getattr(target_config.hf_config, "architectures", None) or [])
    try:
        model_cls, arch = ModelRegistry.resolve_model_cls(archs, model_config=target_config)
        supports_aux = bool(supports_eagle3(model_cls))
    except Exception:
        arch, supports_aux = (archs[0] if archs else "unknown"), False
    num_layers = target_config.hf_text_config.num_hidden_layers
    blockers = target_dependent_blockers(
        spec,
        projection,
        target_hidden=target_config.get_hidden_size(),
        target_num_layers=num_layers,
        target_supports_aux=supports_aux,
        target_arch=arch,
    )
    if spec.target_layers is not None and needs_final_norm(spec.target_layers, num_layers):
        norm_blocker = final_norm_blocker(target_config.hf_text_config, target_config.trust_remote_code, arch)
        blockers += [norm_blocker] if norm_blocker else []
    requested = getattr(speculative_config, "pard2_mode", None)
    mode = resolve_mode(requested, blockers, str(speculative_config.model))
    if mode == TARGET_DEPENDENT:
        assert projection is not None
        load_projection(projection, spec, draft_config.get_hidden_size())
        logger.info("pard2: target-dependent mode (projection %s)", projection)
    elif requested == TARGET_INDEPENDENT:
        logger.info("pard2: target-independent mode (requested)")
    else:
        logger.info("pard2: target-independent mode, because %s", "; ".join(blockers))
    return mode
