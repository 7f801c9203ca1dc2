"""The training loop for the ``ar``, ``pard`` and ``pard2`` objectives.

Plain PyTorch around a Hugging Face causal LM: one optimizer, one loop, a
resumable checkpoint (``output_dir/checkpoint.pt``) and an export in exactly
the layout the plugin loads (see ``export.py``). Under torchrun every rank
trains the same DDP model on its slice of each global batch; rank 0 logs and
saves. The frozen target runs in the step, on the same device, in the training
precision (see README.md for why it is not precomputed).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from vllm_pard2.train.attention import build_mask
from vllm_pard2.train.config import TrainConfig
from vllm_pard2.train.data import Example, ExampleStream, batch_for_step, load_examples, pad_batch
from vllm_pard2.train.export import export_checkpoint
from vllm_pard2.train.layout import (
    IGNORE_INDEX,
    BlockLayout,
    cat_weights,
    equal_mass_per_depth,
    sample_cod_positions,
)
from vllm_pard2.train.losses import pard2_loss, token_mean_ce
from vllm_pard2.train.progress import Progress, ce_by_depth, weight_sum_by_depth
from vllm_pard2.train.runtime import setup_runtime

DEFAULT_MASK_TOKEN = "<|mask|>"


def resolve_mask_id(tokenizer, pard_token: int | str | None) -> int:
    token = DEFAULT_MASK_TOKEN if pard_token is None else pard_token
    if isinstance(token, int):
        return token
    ids = tokenizer.convert_tokens_to_ids(token)
    if ids is None or ids == tokenizer.unk_token_id:
        raise ValueError(f"pard_token {token!r} is not a token of the tokenizer; give an id or an existing token")
    return int(ids)


def fresh_model(model_fields: dict, tokenizer):
    """A new Qwen3 causal LM with the tokenizer's vocabulary (rounded up to 64)."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    fields = dict(
        vocab_size=(len(tokenizer) + 63) // 64 * 64,
        tie_word_embeddings=False,
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    fields.update(model_fields)
    return AutoModelForCausalLM.from_config(Qwen3Config(**fields), dtype=torch.float32)


class DraftForward(nn.Module):
    """The trainable part of one step (draft + target_proj) as one module, so DDP can wrap it;
    lm_head runs only on the rows that have a label."""

    def __init__(self, model: nn.Module, target_proj: nn.Linear | None, pard2_scale: float):
        super().__init__()
        self.model, self.target_proj, self.pard2_scale = model, target_proj, pard2_scale

    def forward(self, input_ids, rows, attention_mask, position_ids=None, features=None, feature_keep=None):
        embeds = self.model.get_input_embeddings()(input_ids)
        if features is not None:
            # pard2_scale · target_proj(feat[j-1-d]), times a per-sample keep mask (no rescale)
            embeds = embeds + self.pard2_scale * self.target_proj(features) * feature_keep
        hidden = self.model.model(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        return self.model.lm_head(hidden[rows])


class Trainer:
    def __init__(self, cfg: TrainConfig):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        self.rt = setup_runtime(cfg)
        if cfg.batch_size % self.rt.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} (global) must divide by world_size {self.rt.world_size}")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        device = self.rt.device
        self.out = Path(cfg.output_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.init_model)
        if cfg.init_model:
            self.model = AutoModelForCausalLM.from_pretrained(cfg.init_model, dtype=torch.float32)
        else:
            self.model = fresh_model(cfg.model or {}, self.tokenizer)
        if cfg.uses_masks:
            self.model.set_attn_implementation("flex_attention" if self.rt.attention == "flex" else "sdpa")
        self.model.to(device).train()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.mask_id = resolve_mask_id(self.tokenizer, cfg.pard_token) if cfg.uses_masks else None

        self.target = None
        self.target_proj: nn.Linear | None = None
        if cfg.objective == "pard2":
            self.target = AutoModelForCausalLM.from_pretrained(cfg.target_model, dtype=self.rt.dtype)
            self.target.to(device).eval().requires_grad_(False)
            if self.target.config.vocab_size != self.model.config.vocab_size:
                raise ValueError("pard2: target and draft vocab sizes differ; KD needs one vocabulary")
            if cfg.uses_features:
                target_dim = len(cfg.pard2_target_layers) * self.target.config.hidden_size
                self.target_proj = nn.Linear(target_dim, self.model.config.hidden_size, bias=cfg.pard2_proj_bias)
                self.target_proj.to(device)
        self.forward = DraftForward(self.model, self.target_proj, cfg.pard2_scale)
        if self.rt.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.forward = DistributedDataParallel(self.forward, device_ids=None)
        self.params = list(self.model.parameters()) + (list(self.target_proj.parameters()) if self.target_proj else [])
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
        self.examples, self.stream = None, None
        if cfg.streaming:
            args = (cfg.data, self.tokenizer, cfg.seq_len, cfg.loss_on_prompt, cfg.seed, cfg.batch_size)
            self.stream = ExampleStream(*args)
        else:
            self.examples = load_examples(cfg.data, self.tokenizer, cfg.seq_len, cfg.loss_on_prompt)
        self.step = 0

    # ---- schedule and checkpoints -------------------------------------------------
    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return cfg.lr
        progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        """Rank 0 writes; the state holds nothing per rank, so any world size can resume it."""
        if not self.rt.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "target_proj": self.target_proj.state_dict() if self.target_proj else None,
            "optimizer": self.optimizer.state_dict(),
            "config": asdict(self.cfg),
            "world_size": self.rt.world_size,
        }
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint_path)

    def maybe_resume(self) -> bool:
        if not (self.cfg.resume and self.checkpoint_path.is_file()):
            return False
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        if state["config"]["objective"] != self.cfg.objective:
            raise ValueError(f"{self.checkpoint_path} was written by objective {state['config']['objective']!r}")
        self.model.load_state_dict(state["model"])
        if self.target_proj is not None:
            self.target_proj.load_state_dict(state["target_proj"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        return True

    # ---- losses -----------------------------------------------------------------------
    def ar_loss(self, batch: list[Example]) -> tuple[torch.Tensor, dict]:
        tokens, loss_mask, lengths = (t.to(self.rt.device) for t in pad_batch(batch, self.pad_id))
        present = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]
        valid = loss_mask[:, 1:] & present[:, 1:]
        rows = torch.nn.functional.pad(valid, (0, 1), value=False)  # row t predicts token t+1
        with self.rt.autocast():
            logits = self.forward(tokens, rows, present.long())
            loss = token_mean_ce(logits, tokens[:, 1:][valid])
        return loss, {"tokens": int(valid.sum()), "entries": int(lengths.sum()), "ce_by_depth": [float(loss.detach())]}

    def masked_loss(self, batch: list[Example], gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        """pard / pard2: COD block layout per sample (CPU, small vectors), one draft forward for the batch."""
        cfg, device = self.cfg, self.rt.device
        tokens, loss_mask, lengths = pad_batch(batch, self.pad_id)
        teacher = self.teacher_outputs(tokens.to(device), lengths.to(device)) if self.target is not None else None
        token_logprob = teacher["token_logprob"].cpu() if teacher is not None else None
        layouts = [
            BlockLayout.from_kept(sample_cod_positions(int(n), cfg.para_num, cfg.cod_ratio, cfg.cod_min_ratio, gen))
            for n in lengths
        ]
        bsz, width = len(batch), max(len(lay) for lay in layouts)
        input_ids = torch.full((bsz, width), self.pad_id, dtype=torch.long)
        depth = torch.full((bsz, width), -1, dtype=torch.long)  # -1: padding
        position = torch.zeros((bsz, width), dtype=torch.long)
        labels = torch.full((bsz, width), IGNORE_INDEX, dtype=torch.long)
        weights = torch.zeros((bsz, width))
        feat_index = torch.full((bsz, width), -1, dtype=torch.long)
        for b, (ex, layout) in enumerate(zip(batch, layouts, strict=True)):
            t, n = len(layout), int(lengths[b])
            lab = layout.labels(ex.tokens, ex.loss_mask)
            input_ids[b, :t], labels[b, :t] = layout.input_ids(ex.tokens, self.mask_id), lab
            depth[b, :t], position[b, :t], feat_index[b, :t] = layout.depth, layout.position, layout.feature_index()
            if teacher is not None:
                weights[b, :t] = (
                    cat_weights(layout, token_logprob[b, :n], lab, cfg.cat_weight_power)
                    if cfg.cat_weighting
                    else (lab != IGNORE_INDEX).float()
                )
        input_ids, depth, position, labels, weights = (
            t.to(device) for t in (input_ids, depth, position, labels, weights)
        )
        valid = labels != IGNORE_INDEX
        features = keep = None
        if self.target_proj is not None:
            features, keep = self.gathered_features(teacher["features"], feat_index.to(device), gen)
        mask = build_mask(self.rt.attention, depth, position)
        with self.rt.autocast():
            logits = self.forward(input_ids, valid, mask, position, features, keep)
        parts = {"tokens": int(valid.sum()), "entries": int(sum(len(lay) for lay in layouts))}
        parts["ce_by_depth"] = ce_by_depth(logits, labels[valid], depth[valid], cfg.para_num)
        if teacher is None:  # pard: token-mean CE, every labelled row weighs 1
            parts["weight_sum_by_depth"] = weight_sum_by_depth(
                torch.ones_like(depth[valid]), depth[valid], cfg.para_num
            )
            return token_mean_ce(logits, labels[valid]), parts
        if cfg.cat_depth_norm:
            weights = equal_mass_per_depth(weights, depth, valid)
        parts["weight_sum_by_depth"] = weight_sum_by_depth(weights[valid], depth[valid], cfg.para_num)
        batch_idx = torch.arange(bsz, device=device)[:, None].expand(bsz, width)[valid]
        teacher_logits = teacher["logits"][batch_idx, position[valid]]
        loss, extra = pard2_loss(
            logits, labels[valid], teacher_logits, weights[valid], cfg.ce_alpha, cfg.kd_alpha, cfg.kd_temperature
        )
        parts.update(extra)
        parts["mean_w"] = float(weights[valid].mean())
        return loss, parts

    @torch.no_grad()
    def teacher_outputs(self, tokens: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """Frozen target on the real text: logits, log p(x_t | x_<t) and the concatenated features."""
        present = (torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]).long()
        out = self.target(input_ids=tokens, attention_mask=present, output_hidden_states=self.cfg.uses_features)
        logits = out.logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, tokens[:, 1:, None])[..., 0]
        token_logprob = torch.cat([torch.zeros_like(logp[:, :1]), logp], dim=1)
        result = {"logits": logits, "token_logprob": token_logprob}
        if self.cfg.uses_features:
            result["features"] = torch.cat([out.hidden_states[i] for i in self.cfg.pard2_target_layers], dim=-1)
        return result

    def gathered_features(self, features: torch.Tensor, feat_index: torch.Tensor, gen: torch.Generator):
        """(feat[j-1-d] per entry, zero where the index is -1; per-sample Bernoulli keep mask)
        so some samples train as TI."""
        bsz = features.shape[0]
        gathered = features[torch.arange(bsz, device=features.device)[:, None], feat_index.clamp(min=0)]
        gathered = gathered.float() * (feat_index >= 0)[..., None]
        keep = (torch.rand(bsz, generator=gen) >= self.cfg.target_feat_mask).float()[:, None, None]
        return gathered, keep.to(features.device)

    # ---- loop ---------------------------------------------------------------------------
    def global_batch_slice(self) -> list[Example]:
        """This rank's share of the step's global batch: the same global batches at any
        world size, which is what lets a checkpoint resume under another world size."""
        cfg = self.cfg
        if self.stream is not None:
            batch = self.stream.batch(self.step)
        else:
            batch = batch_for_step(self.examples, cfg.batch_size, cfg.seed, self.step, cfg.length_buckets)
        return batch[self.rt.rank :: self.rt.world_size]

    def train(self) -> dict:
        cfg, rt = self.cfg, self.rt
        resumed = self.maybe_resume()
        start_step, started = self.step, time.perf_counter()
        progress = Progress(self.out, cfg, rt, initial=self.step)
        progress.note(
            f"world_size={rt.world_size} device={rt.device} precision={cfg.precision} attention={rt.attention}"
            + (f" resumed_from={start_step}" if resumed else "")
        )
        last: dict = {}
        while self.step < cfg.steps:
            gen = torch.Generator().manual_seed(cfg.seed * 7919 + self.step + 1_000_003 * rt.rank)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(self.step)
            batch = self.global_batch_slice()
            loss, parts = self.ar_loss(batch) if cfg.objective == "ar" else self.masked_loss(batch, gen)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over ranks here
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.optimizer.step()
            self.step += 1
            loss_sum, tokens = rt.all_reduce_sum([float(loss.detach()), float(parts["entries"])])
            parts["entries"] = int(tokens)
            last = {"step": self.step, "loss": loss_sum / rt.world_size, "lr": self.lr_at(self.step - 1), **parts}
            progress.update(last)
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                self.save_checkpoint()
        progress.close()
        self.save_checkpoint()
        if rt.is_main:
            export_checkpoint(self)
        summary = {
            "objective": cfg.objective,
            "weight_mass_by_depth": progress.run_weight_mass(),
            "steps": self.step,
            "resumed_from": start_step if resumed else None,
            "world_size": rt.world_size,
            "device": str(rt.device),
            "precision": cfg.precision,
            "attention": rt.attention if cfg.uses_masks else "causal",
            "wall_s": round(time.perf_counter() - started, 1),
            "final": last,
            "num_examples": len(self.examples) if self.examples is not None else None,
        }
        if rt.is_main:
            (self.out / "train_summary.json").write_text(json.dumps(summary, indent=2))
        rt.barrier()
        rt.close()
        return summary
