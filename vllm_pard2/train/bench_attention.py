"""Peak memory and time of one PARD training step per attention path (the README table).

    python -m vllm_pard2.train.bench_attention [--seq-len 1024] [--para-num 16] [--device cpu]

One COD layout (r 0.7, r_min 0.1) of one sample; a fresh Qwen3 of the embedded
drafter's shape. Each path runs in its own process after one warm-up step
(FlexAttention compiles there), so peaks do not mix; the time is the median of three steps and
``mask_mib`` the size of the mask itself (for a BlockMask: its block index tensors):

- ``dense_float``: the additive float32 (K·L)² mask (the trainer before FlexAttention);
- ``dense_bool``: the bool mask the trainer's ``dense`` path builds;
- ``flex``: the block-sparse ``BlockMask`` (training needs a GPU; on CPU torch
  2.13 has no FlexAttention backward, so there it is measured forward-only, next
  to ``dense_bool`` forward-only).
Memory: ``torch.cuda.max_memory_allocated`` during the step on GPU; on CPU the
growth of peak RSS during the step over RSS before it (the kernel's peak is
reset after the warm-up through ``/proc/self/clear_refs``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from vllm_pard2.train.attention import build_mask
from vllm_pard2.train.layout import BlockLayout, additive_mask, sample_cod_positions

SHAPE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def rss_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def one_path(path: str, seq_len: int, para_num: int, device: torch.device, backward: bool) -> dict:
    from transformers import AutoModelForCausalLM, Qwen3Config

    torch.manual_seed(0)
    model_cfg = Qwen3Config(vocab_size=2048, head_dim=32, max_position_embeddings=4096, **SHAPE)
    model = AutoModelForCausalLM.from_config(model_cfg, dtype=torch.float32).to(device)
    model.set_attn_implementation("flex_attention" if path == "flex" else "sdpa")
    gen = torch.Generator().manual_seed(0)
    layout = BlockLayout.from_kept(sample_cod_positions(seq_len, para_num, 0.7, 0.1, gen))
    input_ids = layout.input_ids(torch.randint(0, 2000, (seq_len,), generator=gen), 2047)[None].to(device)
    depth, position = layout.depth[None].to(device), layout.position[None].to(device)

    def make_mask():
        if path == "dense_float":
            return additive_mask(layout.attention_allowed().to(device), torch.float32)[None, None]
        return build_mask("flex" if path == "flex" else "dense", depth, position)

    def step() -> None:
        with torch.set_grad_enabled(backward):
            logits = model(input_ids=input_ids, attention_mask=make_mask(), position_ids=position).logits
            if backward:
                logits.float().logsumexp(-1).mean().backward()
                model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (compiles FlexAttention)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM
        before = rss_mib("VmRSS")
    started = time.perf_counter()
    step()
    seconds = [time.perf_counter() - started]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else rss_mib("VmHWM") - before
    for _ in range(2):  # the median of three timed steps
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    mask = make_mask()
    tensors = [mask] if isinstance(mask, torch.Tensor) else [t for t in mask.as_tuple() if isinstance(t, torch.Tensor)]
    return {
        "path": path,
        "backward": backward,
        "entries": len(layout),
        "step_s": round(sorted(seconds)[1], 3),
        "peak_mib": round(peak),
        "mask_mib": round(sum(t.numel() * t.element_size() for t in tensors) / 2**20, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--para-num", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: path,backward in this process
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.one:
        path, backward = args.one.split(",")
        print(json.dumps(one_path(path, args.seq_len, args.para_num, device, backward == "1")))
        return
    runs = [("dense_float", 1), ("dense_bool", 1)]
    runs += [("flex", 1)] if device.type == "cuda" else [("dense_bool", 0), ("flex", 0)]
    common = ["--seq-len", str(args.seq_len), "--para-num", str(args.para_num), "--device", args.device]
    for path, backward in runs:
        cmd = [sys.executable, "-m", "vllm_pard2.train.bench_attention", *common, "--one", f"{path},{backward}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        print(out.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
