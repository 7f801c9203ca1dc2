"""``method: "pard2"`` on vLLM 0.34: the registered ``SpeculatorConfig``.

vLLM 0.34 builds a custom method's draft config through the ``SpeculatorConfig``
named in ``register_speculative_method``, and imports this module in every
process it starts (API server, engine core, workers). So, like vLLM's own
``*/config.py`` modules, it imports no speculator code: the MRV2 speculator is
named by qualified name and loaded only in the GPU workers.

pard2's own options go in vLLM's ``speculator_options`` field (vLLM 0.34 rejects
unknown top-level keys), e.g. ``{"method": "pard2", "model": DRAFT,
"num_speculative_tokens": 8, "speculator_options": {"pard2_mode": "auto"}}``.
``configure`` resolves ``auto`` once, in the front end, and writes the concrete
mode back into ``speculator_options``, so every worker sees the same decision.

The checks are the 0.32 adapter's (``vllm_pard2.config``, ``vllm_pard2.checkpoint``),
imported rather than copied.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar

from vllm.v1.worker.gpu.spec_decode.speculator_config import DraftModelSpeculatorConfig

from vllm_pard2.checkpoint import TARGET_DEPENDENT, TARGET_INDEPENDENT, choose_mode, read_pard2_spec
from vllm_pard2.config import (
    PARD2_METHOD,
    Pard2ConfigError,
    check_draft_against_target,
    check_draft_path,
    check_keys,
    check_num_speculative_tokens,
    check_pard2_mode,
)
from vllm_pard2.proposer.target_features import plan_layers

if TYPE_CHECKING:
    from vllm.config import SpeculativeConfig

# The keys pard2 reads from ``speculator_options``.
PARD2_OPTIONS = ("pard2_mode",)
# The draft hf_config key from which vLLM 0.34's runner takes the target layers
# to capture (``get_eagle3_aux_layers_from_config``), in its "after L decoder
# layers" numbering (0 = embeddings), which ``plan_layers`` produces.
AUX_LAYER_IDS_KEY = "eagle_aux_hidden_state_layer_ids"


def pard2_options(spec: SpeculativeConfig) -> dict[str, Any]:
    return dict(spec.speculator_options or {})


def resolved_mode(spec: SpeculativeConfig) -> str:
    """The mode ``configure`` settled on (``target_dependent`` or ``target_independent``)."""
    return pard2_options(spec).get("pard2_mode", TARGET_INDEPENDENT)


class Pard2SpeculatorConfig(DraftModelSpeculatorConfig):
    """PARD-2 parallel drafting (target-independent and target-dependent).

    Not based on a built-in method (``base_method`` None): vLLM 0.34 keys
    DFlash's hidden-state wiring, EAGLE block dropping and its own draft-model
    rewrites on ``method == "dflash"`` / ``"draft_model"``, none of which fit a
    plain causal-LM drafter that reads real tokens and masks.
    """

    base_method: ClassVar[str | None] = None
    speculator_class: ClassVar[str | None] = "vllm_pard2.vllm034.speculator.Pard2Speculator"
    supported_options: ClassVar[frozenset[str]] = frozenset({"speculator_options"})
    # Generates all k drafts in one forward pass.
    parallel_drafting: ClassVar[bool] = True
    # The draft shares the target's vocabulary (vLLM checks the sizes).
    draft_has_own_vocab: ClassVar[bool] = True
    # A class-level flag in vLLM 0.34 (EAGLE-style scheduling and KV-transfer
    # paths); pard2 reads target states only through the aux capture
    # (``uses_aux_hidden_states``), which follows the resolved mode.
    uses_target_hidden_states: ClassVar[bool] = False
    # The draft keeps its own positional limit.
    shares_target_positions: ClassVar[bool] = False

    @classmethod
    def configure(cls, spec: SpeculativeConfig) -> None:
        options = pard2_options(spec)
        check_keys(options, PARD2_OPTIONS)
        check_pard2_mode(options.get("pard2_mode"))
        if spec.parallel_drafting is not None:
            raise Pard2ConfigError(
                "pard2 always drafts in parallel, and vLLM 0.34 deprecates 'parallel_drafting': remove it."
            )
        check_num_speculative_tokens(spec.num_speculative_tokens)
        check_draft_path(spec.model)
        super().configure(spec)
        draft, target = spec.draft_model_config, spec.target_model_config
        check_draft_against_target(draft.hf_config, draft.get_vocab_size(), target.get_vocab_size(), str(spec.model))
        mode = choose_mode(
            SimpleNamespace(
                draft_model_config=draft,
                target_model_config=target,
                model=spec.model,
                pard2_mode=options.get("pard2_mode"),
            )
        )
        if mode == TARGET_DEPENDENT:
            layers = read_pard2_spec(draft.hf_config).target_layers
            assert layers is not None
            plan = plan_layers(layers, target.hf_text_config.num_hidden_layers)
            setattr(draft.hf_config, AUX_LAYER_IDS_KEY, list(plan.aux_layer_ids))
        spec.speculator_options = {**options, "pard2_mode": mode}

    @property
    def uses_aux_hidden_states(self) -> bool:
        return resolved_mode(self.spec_config) == TARGET_DEPENDENT

    @property
    def num_lookahead_tokens(self) -> int:
        # The bonus token and k-1 masks occupy positions beyond the target's.
        return self.num_speculative_tokens

    def max_num_draft_seqs(self, max_num_batched_tokens: int) -> int:
        # A decode step's draft pass holds the target's k+1 rows plus k rows per
        # request. (A prefill step can exceed max_num_batched_tokens by k rows per
        # request; the speculator sizes its own buffers for that.)
        return max_num_batched_tokens // (2 * self.num_speculative_tokens + 1)

    def hash_factors(self) -> list[Any]:
        return [PARD2_METHOD, resolved_mode(self.spec_config)]
