"""Offline acceptance check of a drafter in plain PyTorch (no vLLM): a quick diagnostic.

    python -m vllm_pard2.train.eval_acceptance --target T --draft D [--k 8] [--num-prompts 10] [--features]

The target continues each held-out HumanEval prompt greedily; at every 4th
position p of the continuation the draft gets x_0..x_p plus k-1 mask tokens (the
inference input) and the run of drafts that match the continuation is counted.
Prints P(first d drafts accepted) per depth and τ = 1 + Σ_d P (τ COUNTS THE
BONUS TOKEN). ``--features`` adds the PARD-2 target features (TD mode): x_t
gets feat[t-1] (zero at t = 0) and every mask gets feat[p-1].
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "humaneval_prompts.jsonl"


def draft_logits(draft, ids: torch.Tensor, p: int, k: int, mask_id: int, feats=None, warp=None, scale=0.0):
    inp = torch.cat([ids[: p + 1], torch.full((k - 1,), mask_id)])
    if feats is None:
        return draft(input_ids=inp[None]).logits[0, p:]
    index = torch.cat([torch.arange(-1, p), torch.full((k - 1,), p - 1)])
    gathered = feats[index.clamp(min=0)] * (index >= 0)[:, None]
    embeds = draft.get_input_embeddings()(inp) + scale * warp(gathered)
    return draft(inputs_embeds=embeds[None]).logits[0, p:]


@torch.no_grad()
def evaluate(target_dir: str, draft_dir: str, k: int, num_prompts: int, max_tokens: int, features: bool) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(target_dir)
    target = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32).eval()
    draft = AutoModelForCausalLM.from_pretrained(draft_dir, dtype=torch.float32).eval()
    cfg = json.loads((Path(draft_dir) / "config.json").read_text())
    warp = None
    if features:
        state = torch.load(Path(draft_dir) / "warp_model.bin", weights_only=True)
        warp = torch.nn.Linear(cfg["pard2_target_dim"], cfg["hidden_size"], bias="target_proj.bias" in state)
        warp.load_state_dict({k.removeprefix("target_proj."): v.float() for k, v in state.items()})
    prompts = [json.loads(line)["prompt"] for line in PROMPTS.read_text().splitlines()][:num_prompts]
    hits, n = torch.zeros(k), 0
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt")["input_ids"]
        seq = target.generate(ids, max_new_tokens=max_tokens, do_sample=False)[0]
        feats = None
        if features:
            hidden = target(input_ids=seq[None], output_hidden_states=True).hidden_states
            feats = torch.cat([hidden[i][0] for i in cfg["pard2_target_layers"]], dim=-1)
        for p in range(ids.shape[1] - 1, seq.numel() - k - 1, 4):
            logits = draft_logits(draft, seq, p, k, cfg["pard_token"], feats, warp, cfg.get("pard2_scale", 0.0))
            hits += torch.cumprod((logits.argmax(-1) == seq[p + 1 : p + 1 + k]).float(), 0)
            n += 1
    accepted = (hits / max(n, 1)).tolist()
    return {"positions": n, "p_first_d_accepted": [round(a, 3) for a in accepted], "tau": round(1 + sum(accepted), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--draft", required=True)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--num-prompts", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--features", action="store_true", help="TD mode: add the PARD-2 target features")
    args = parser.parse_args()
    result = evaluate(args.target, args.draft, args.k, args.num_prompts, args.max_tokens, args.features)
    print(json.dumps({"tau_counts_bonus_token": True, **result}))


if __name__ == "__main__":
    main()
