"""Build a tiny target + PARD draft pair on disk, offline, in seconds.

The pair is what the tests and the README's main job run on until a trained
pair ships: a BPE tokenizer trained on the Python standard library's own
source (present on every machine), a random-weight target, and drafts of the
three supported architectures (Qwen3, Llama, Qwen2) whose config carries
``pard_token``. Output heads are sharpened (large logit margins) so float32
greedy decoding has no near-ties, which makes token-exact comparisons between
differently batched runs meaningful.

    python -m vllm_pard2.tiny_pair OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

MASK_TOKEN = "<|mask|>"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", MASK_TOKEN]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# The TD draft's feature path (see `_td_draft`).
TD_TARGET_LAYERS = [-1, -2, -4]
TD_SCALE = 0.02
TD_PROJ_STD = 0.005

# Logit standard deviation of the sharpened heads: top-1/top-2 gaps of several
# units, far above float32 reduction-order noise.
HEAD_LOGIT_STD = 10.0


@dataclass(frozen=True)
class ModelShape:
    architecture: str  # "qwen3" | "llama" | "qwen2"
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    head_dim: int = 32


TARGET_SHAPE = ModelShape("qwen3", 128, 4, 4, 2, 256)
DRAFT_SHAPES = {
    "qwen3": ModelShape("qwen3", 64, 2, 2, 1, 128),
    "llama": ModelShape("llama", 64, 2, 2, 1, 128),
    "qwen2": ModelShape("qwen2", 64, 2, 2, 1, 128),
}


def stdlib_corpus(max_files: int = 120) -> list[str]:
    """A deterministic slice of the standard library's source files."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())[:max_files]
    return [p.read_text(encoding="utf-8", errors="ignore") for p in files]


def build_tokenizer(out_dir: Path, vocab_size: int = 1024):
    """Train a byte-level BPE on stdlib source and save it as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(stdlib_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        bos_token=None,
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>", MASK_TOKEN],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def _hf_config(shape: ModelShape, vocab_size: int, eos_id: int, pad_id: int):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=None,
        torch_dtype="float32",
    )
    if shape.architecture == "qwen3":
        return Qwen3Config(head_dim=shape.head_dim, **common)
    if shape.architecture == "llama":
        return LlamaConfig(head_dim=shape.head_dim, **common)
    if shape.architecture == "qwen2":
        return Qwen2Config(**common)
    raise ValueError(f"unknown architecture {shape.architecture!r}")


def random_model(
    shape: ModelShape, vocab_size: int, eos_id: int, pad_id: int, seed: int, head_logit_std: float = HEAD_LOGIT_STD
):
    """A random causal LM whose output logits have about ``head_logit_std`` spread."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = _hf_config(shape, vocab_size, eos_id, pad_id)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        head.normal_(0.0, head_logit_std / shape.hidden_size**0.5)
    return model.eval()


def save_model(model, tokenizer, out_dir: Path, extra_config: dict | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if extra_config:
        cfg_path = out_dir / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.update(extra_config)
        cfg_path.write_text(json.dumps(cfg, indent=2))
    return out_dir


def save_pard2_draft(
    model,
    tokenizer,
    out_dir: Path,
    pard_token: int,
    target_layers: list[int],
    target_hidden: int,
    proj_weight: torch.Tensor,
    scale: float,
    proj_bias: torch.Tensor | None = None,
) -> Path:
    """A draft in the published PARD-2 layout: HF checkpoint with the pard2
    config keys, plus ``warp_model.bin`` holding ``target_proj``."""
    config = {
        "pard2": True,
        "spd_type": "pard2",
        "pard_token": pard_token,
        "pard2_scale": scale,
        "pard2_proj_bias": proj_bias is not None,
        "pard2_target_dim": len(target_layers) * target_hidden,
        "pard2_target_layers": list(target_layers),
    }
    save_model(model, tokenizer, out_dir, config)
    state = {"target_proj.weight": proj_weight.contiguous()}
    if proj_bias is not None:
        state["target_proj.bias"] = proj_bias.contiguous()
    torch.save(state, out_dir / "warp_model.bin")
    return out_dir


def perturbed_copy(model, noise: float, seed: int):
    """The target with relative Gaussian noise on every weight: a draft that
    agrees with it often but not always."""
    import copy

    torch.manual_seed(seed)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(torch.randn_like(p) * p.std().clamp_min(1e-3) * noise)
    return clone


def build_tiny_pair(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write target and drafts under ``out_dir``; return their paths by name.

    Names: ``target``; ``draft_copy`` (target weights + pard_token: near-full
    acceptance of draft position 1); ``draft_noisy`` (perturbed target: partial
    acceptance); ``draft_llama``, ``draft_qwen2``, ``draft_qwen3`` (small random
    drafts of each supported architecture); ``draft_td`` (a PARD-2 draft in the
    published layout, ``warp_model.bin`` included, for target-dependent mode).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out / "tokenizer")
    vocab = len(tokenizer)
    vocab_size = (vocab + 63) // 64 * 64
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    pard = {"pard_token": tokenizer.convert_tokens_to_ids(MASK_TOKEN), "spd_type": "pard"}

    target = random_model(TARGET_SHAPE, vocab_size, eos_id, pad_id, seed)
    paths = {"target": save_model(target, tokenizer, out / "target")}
    paths["draft_copy"] = save_model(target, tokenizer, out / "draft_copy", pard)
    paths["draft_noisy"] = save_model(perturbed_copy(target, 0.15, seed + 1), tokenizer, out / "draft_noisy", pard)
    for i, (name, shape) in enumerate(DRAFT_SHAPES.items()):
        model = random_model(shape, vocab_size, eos_id, pad_id, seed + 10 + i)
        paths[f"draft_{name}"] = save_model(model, tokenizer, out / f"draft_{name}", pard)
    paths["draft_td"] = _td_draft(target, tokenizer, out / "draft_td", pard["pard_token"], seed + 20)
    return paths


def _td_draft(target, tokenizer, out_dir: Path, pard_token: int, seed: int) -> Path:
    """A PARD-2 draft (target weights + a small random target_proj): the
    features change most drafts (a random model is very sensitive to its input)
    while about half of the first drafts still match the target, so steps with
    partial acceptance occur. Layers [-1, -2, -4] exercise the final norm (-1)
    and the reordering of vLLM's ascending capture."""
    layers = TD_TARGET_LAYERS
    hidden = TARGET_SHAPE.hidden_size
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(hidden, len(layers) * hidden, generator=generator) * TD_PROJ_STD
    bias = torch.randn(hidden, generator=generator) * TD_PROJ_STD
    return save_pard2_draft(target, tokenizer, out_dir, pard_token, layers, hidden, weight, TD_SCALE, bias)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="directory to write the pair into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, path in build_tiny_pair(args.out_dir, args.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
