"""The training loop for the ``ar``, ``pard`` and ``pard2`` objectives.

Plain PyTorch around a Hugging Face causal LM: one optimizer, one loop, a
resumable checkpoint (``output_dir/checkpoint.pt``) and an export in exactly
the layout the plugin loads (see ``export.py``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from vllm_pard2.train.config import TrainConfig
from vllm_pard2.train.data import Example, batch_for_step, load_examples, pad_batch
from vllm_pard2.train.export import export_checkpoint
from vllm_pard2.train.layout import IGNORE_INDEX, BlockLayout, additive_mask, cat_weights, sample_cod_positions
from vllm_pard2.train.losses import pard2_loss, token_mean_ce

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


class Trainer:
    def __init__(self, cfg: TrainConfig):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.out = Path(cfg.output_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.init_model)
        if cfg.init_model:
            self.model = AutoModelForCausalLM.from_pretrained(cfg.init_model, dtype=torch.float32)
        else:
            self.model = fresh_model(cfg.model or {}, self.tokenizer)
        self.model.train()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.mask_id = resolve_mask_id(self.tokenizer, cfg.pard_token) if cfg.uses_masks else None

        self.target = None
        self.target_proj: nn.Linear | None = None
        if cfg.objective == "pard2":
            self.target = AutoModelForCausalLM.from_pretrained(cfg.target_model, dtype=torch.float32).eval()
            self.target.requires_grad_(False)
            if self.target.config.vocab_size != self.model.config.vocab_size:
                raise ValueError("pard2: target and draft vocab sizes differ; KD needs one vocabulary")
            if cfg.uses_features:
                target_dim = len(cfg.pard2_target_layers) * self.target.config.hidden_size
                self.target_proj = nn.Linear(target_dim, self.model.config.hidden_size, bias=cfg.pard2_proj_bias)
        params = list(self.model.parameters()) + (list(self.target_proj.parameters()) if self.target_proj else [])
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
        self.params = params
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
        self.out.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "target_proj": self.target_proj.state_dict() if self.target_proj else None,
            "optimizer": self.optimizer.state_dict(),
            "config": asdict(self.cfg),
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
    def ar_loss(self, batch: list[Example]) -> tuple[torch.Tensor, dict[str, float]]:
        tokens, loss_mask, lengths = pad_batch(batch, self.pad_id)
        present = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
        hidden = self.model.model(input_ids=tokens, attention_mask=present.long()).last_hidden_state
        valid = loss_mask[:, 1:] & present[:, 1:]
        logits = self.model.lm_head(hidden[:, :-1][valid])
        loss = token_mean_ce(logits, tokens[:, 1:][valid])
        return loss, {"tokens": int(valid.sum())}

    def masked_loss(self, batch: list[Example], gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """pard / pard2: COD block layout per sample, one draft forward for the batch."""
        cfg = self.cfg
        tokens, loss_mask, lengths = pad_batch(batch, self.pad_id)
        teacher = self.teacher_outputs(tokens, lengths) if self.target is not None else None
        layouts, rows = [], []
        for b, ex in enumerate(batch):
            n = int(lengths[b])
            layout = BlockLayout.from_kept(sample_cod_positions(n, cfg.para_num, cfg.cod_ratio, cfg.cod_min_ratio, gen))
            labels = layout.labels(ex.tokens, ex.loss_mask)
            weights = None
            if teacher is not None:
                weights = cat_weights(layout, teacher["token_logprob"][b, :n], labels)
                if not cfg.cat_weighting:
                    weights = (labels != IGNORE_INDEX).float()
            layouts.append(layout)
            rows.append((layout.input_ids(ex.tokens, self.mask_id), labels, weights))
        width = max(len(lay) for lay in layouts)
        bsz = len(batch)
        input_ids = torch.full((bsz, width), self.pad_id, dtype=torch.long)
        position_ids = torch.zeros((bsz, width), dtype=torch.long)
        labels = torch.full((bsz, width), IGNORE_INDEX, dtype=torch.long)
        weights = torch.zeros((bsz, width))
        feat_index = torch.full((bsz, width), -1, dtype=torch.long)
        allowed = torch.eye(width, dtype=torch.bool).repeat(bsz, 1, 1)  # padding rows see themselves only
        for b, (layout, (ids, lab, w)) in enumerate(zip(layouts, rows, strict=True)):
            t = len(layout)
            input_ids[b, :t], position_ids[b, :t], labels[b, :t] = ids, layout.position, lab
            feat_index[b, :t] = layout.feature_index()
            allowed[b, :t, :t] = layout.attention_allowed()
            if w is not None:
                weights[b, :t] = w
        embeds = self.model.get_input_embeddings()(input_ids)
        if self.target_proj is not None:
            embeds = embeds + self.projected_features(teacher["features"], feat_index, gen)
        mask = additive_mask(allowed, embeds.dtype)[:, None]
        hidden = self.model.model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids
        ).last_hidden_state
        valid = labels != IGNORE_INDEX
        logits = self.model.lm_head(hidden[valid])
        parts = {"tokens": int(valid.sum()), "entries": int(sum(len(lay) for lay in layouts))}
        if teacher is None:
            return token_mean_ce(logits, labels[valid]), parts
        batch_idx = torch.arange(bsz)[:, None].expand(bsz, width)[valid]
        teacher_logits = teacher["logits"][batch_idx, position_ids[valid]]
        loss, extra = pard2_loss(
            logits, labels[valid], teacher_logits, weights[valid], cfg.ce_alpha, cfg.kd_alpha, cfg.kd_temperature
        )
        parts.update(extra)
        parts["mean_w"] = float(weights[valid].mean())
        return loss, parts

    @torch.no_grad()
    def teacher_outputs(self, tokens: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """Frozen target on the real text: logits, log p(x_t | x_<t) and the concatenated features."""
        present = (torch.arange(tokens.shape[1])[None, :] < lengths[:, None]).long()
        out = self.target(input_ids=tokens, attention_mask=present, output_hidden_states=self.cfg.uses_features)
        logits = out.logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, tokens[:, 1:, None])[..., 0]
        token_logprob = torch.cat([torch.zeros_like(logp[:, :1]), logp], dim=1)
        result = {"logits": logits, "token_logprob": token_logprob}
        if self.cfg.uses_features:
            result["features"] = torch.cat([out.hidden_states[i] for i in self.cfg.pard2_target_layers], dim=-1)
        return result

    def projected_features(self, features: torch.Tensor, feat_index: torch.Tensor, gen: torch.Generator):
        """pard2_scale · target_proj(feat[j-1-d]) with zero features where the index is -1,
        times a per-sample Bernoulli keep mask (no rescale) so some samples train as TI."""
        bsz = features.shape[0]
        gathered = features[torch.arange(bsz)[:, None], feat_index.clamp(min=0)]
        gathered = gathered * (feat_index >= 0)[..., None]
        keep = (torch.rand(bsz, generator=gen) >= self.cfg.target_feat_mask).float()[:, None, None]
        return self.cfg.pard2_scale * self.target_proj(gathered) * keep

    # ---- loop ---------------------------------------------------------------------------
    def train(self) -> dict:
        from tqdm import tqdm

        cfg = self.cfg
        resumed = self.maybe_resume()
        start_step, started = self.step, time.perf_counter()
        log_path = self.out / "train_log.jsonl"
        self.out.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"{cfg.objective} {self.out.name}", mininterval=5)
        last: dict[str, float] = {}
        while self.step < cfg.steps:
            gen = torch.Generator().manual_seed(cfg.seed * 7919 + self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr_at(self.step)
            batch = batch_for_step(self.examples, cfg.batch_size, cfg.seed, self.step)
            loss, parts = self.ar_loss(batch) if cfg.objective == "ar" else self.masked_loss(batch, gen)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
            self.optimizer.step()
            self.step += 1
            last = {"step": self.step, "loss": float(loss.detach()), "lr": self.lr_at(self.step - 1), **parts}
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.3f}")
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                with log_path.open("a") as fh:
                    fh.write(json.dumps(last) + "\n")
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                self.save_checkpoint()
        bar.close()
        self.save_checkpoint()
        export_checkpoint(self)
        summary = {
            "objective": cfg.objective,
            "steps": self.step,
            "resumed_from": start_step if resumed else None,
            "wall_s": round(time.perf_counter() - started, 1),
            "final": last,
            "num_examples": len(self.examples),
        }
        (self.out / "train_summary.json").write_text(json.dumps(summary, indent=2))
        return summary
