"""Progress of a training run (rank 0 only): a tqdm bar with loss, tokens/s, CE per depth and
ETA; ``train_log.jsonl`` every ``log_every`` steps; TensorBoard scalars when it is installed."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


@torch.no_grad()
def ce_by_depth(logits: torch.Tensor, labels: torch.Tensor, depth: torch.Tensor, num_depths: int) -> list:
    """Unweighted CE per depth block (None where a depth has no labelled row); for logging only."""
    ce = F.cross_entropy(logits.float(), labels, reduction="none").double()
    sums = torch.bincount(depth, weights=ce, minlength=num_depths).tolist()
    counts = torch.bincount(depth, minlength=num_depths).tolist()
    return [round(s / c, 4) if c else None for s, c in zip(sums, counts, strict=True)]


@torch.no_grad()
def weight_sum_by_depth(weights: torch.Tensor, depth: torch.Tensor, num_depths: int) -> list[float]:
    """Loss weight summed per depth block (rows of the loss only). Divided by the total
    it is where the objective puts its weight: under CAT a depth-d row weighs the
    product of d target probabilities, so an unsure target starves deep blocks."""
    return torch.bincount(depth, weights=weights.double(), minlength=num_depths).tolist()


def shares(sums: list[float]) -> list[float]:
    total = sum(sums)
    return [round(s / total, 6) if total > 0 else 0.0 for s in sums]


def _tensorboard_writer(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(path))


class Progress:
    def __init__(self, out: Path, cfg, rt, initial: int):
        self.cfg, self.enabled = cfg, rt.is_main
        self.log_path = out / "train_log.jsonl"
        self.bar = None
        self.writer = None
        self.started, self.entries = time.perf_counter(), 0
        self.weight_sums: list[float] = []  # loss weight per depth, summed over the run
        if not self.enabled:
            return
        from tqdm import tqdm

        out.mkdir(parents=True, exist_ok=True)
        self.bar = tqdm(total=cfg.steps, initial=initial, desc=f"{cfg.objective} {out.name}", mininterval=5)
        if cfg.tensorboard:
            self.writer = _tensorboard_writer(out / "tb")

    def note(self, message: str) -> None:
        if self.enabled:
            print(f"vllm_pard2.train: {message}", file=sys.stderr, flush=True)

    def update(self, record: dict) -> None:
        """``record``: step, loss, lr, entries (all ranks), ce_by_depth, weight_sum_by_depth, ..."""
        if not self.enabled:
            return
        sums = record.pop("weight_sum_by_depth", None)
        if sums is not None:
            self.weight_sums = [a + b for a, b in zip(self.weight_sums or [0.0] * len(sums), sums, strict=True)]
            record["weight_mass_by_depth"] = shares(sums)
        self.entries += record["entries"]
        tokens_per_s = self.entries / max(time.perf_counter() - self.started, 1e-9)
        record["tokens_per_s"] = round(tokens_per_s, 1)
        depths = [f"{c:.2f}" if c is not None else "-" for c in record.get("ce_by_depth", [])]
        shown = depths if len(depths) <= 5 else depths[:4] + ["…", depths[-1]]
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{tokens_per_s:.0f}", ce_d="/".join(shown))
        step = record["step"]
        if step % self.cfg.log_every == 0 or step == self.cfg.steps:
            with self.log_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key in ("loss", "lr", "tokens_per_s", "ce_w", "kd_w", "mean_w"):
                if key in record:
                    self.writer.add_scalar(f"train/{key}", record[key], step)
            for d, value in enumerate(record.get("ce_by_depth", [])):
                if value is not None:
                    self.writer.add_scalar(f"ce_by_depth/{d}", value, step)
            for d, value in enumerate(record.get("weight_mass_by_depth", [])):
                self.writer.add_scalar(f"weight_mass_by_depth/{d}", value, step)

    def run_weight_mass(self) -> list[float] | None:
        """Share of the whole run's loss weight per depth (None for ``ar``)."""
        return shares(self.weight_sums) if self.weight_sums else None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
