"""Unit tests of the training layout and losses against hand-computed values (pure torch, no engine)."""

from __future__ import annotations

import math

import pytest
import torch

from vllm_pard2.train.config import TrainConfigError, config_from_dict
from vllm_pard2.train.layout import (
    IGNORE_INDEX,
    BlockLayout,
    cat_weights,
    cod_keep_counts,
    sample_cod_positions,
)
from vllm_pard2.train.losses import kd_per_row, pard2_loss, token_mean_ce, weighted_mean


def full_layout(seq_len: int, para_num: int) -> BlockLayout:
    return BlockLayout.from_kept(sample_cod_positions(seq_len, para_num, ratio=1.0, min_ratio=0.0))


def test_cod_keep_counts_follow_the_rule():
    # n_d = int(L * max(r^d, r_min)): 10*0.5 = 5, 10*0.25 = 2, 10*max(0.125, 0.2) = 2
    assert cod_keep_counts(10, 4, 0.5, 0.2) == [10, 5, 2, 2]


def test_full_layout_on_tiny_example():
    layout = full_layout(seq_len=4, para_num=3)
    # depth 0: positions 0..3; depth 1: 1..2 (position 3 would predict x_4); depth 2: 2
    assert layout.depth.tolist() == [0, 0, 0, 0, 1, 1, 2]
    assert layout.position.tolist() == [0, 1, 2, 3, 1, 2, 2]
    expected = torch.tensor(
        [
            # keys: r0 r1 r2 r3 m1@1 m1@2 m2@2
            [1, 0, 0, 0, 0, 0, 0],  # x0
            [1, 1, 0, 0, 0, 0, 0],  # x1
            [1, 1, 1, 0, 0, 0, 0],  # x2
            [1, 1, 1, 1, 0, 0, 0],  # x3
            [1, 0, 0, 0, 1, 0, 0],  # mask depth 1 pos 1: sees x0, itself -> predicts x2
            [1, 1, 0, 0, 0, 1, 0],  # mask depth 1 pos 2: sees x0 x1, itself -> predicts x3
            [1, 0, 0, 0, 1, 0, 1],  # mask depth 2 pos 2: sees x0, mask d1@1, itself -> predicts x3
        ],
        dtype=torch.bool,
    )
    assert torch.equal(layout.attention_allowed(), expected)
    tokens = torch.tensor([10, 11, 12, 13])
    assert layout.input_ids(tokens, mask_id=99).tolist() == [10, 11, 12, 13, 99, 99, 99]
    everything = torch.ones(4, dtype=torch.bool)
    assert layout.labels(tokens, everything).tolist() == [11, 12, 13, IGNORE_INDEX, 12, 13, 13]
    # only x3 is a label (e.g. the response starts at x3)
    only_last = torch.tensor([False, False, False, True])
    assert layout.labels(tokens, only_last).tolist() == [IGNORE_INDEX, IGNORE_INDEX, 13, IGNORE_INDEX] + [
        IGNORE_INDEX,
        13,
        13,
    ]
    # feat[j-1-d]: block 0 pairs x_j with feat[j-1]; masks carry their last real token's feature
    assert layout.feature_index().tolist() == [-1, 0, 1, 2, -1, 0, -1]


def test_cod_keeps_every_chain_and_respects_counts():
    gen = torch.Generator().manual_seed(0)
    seq_len, para_num = 50, 8
    kept = sample_cod_positions(seq_len, para_num, 0.7, 0.2, gen)
    counts = cod_keep_counts(seq_len, para_num, 0.7, 0.2)
    assert kept[0].tolist() == list(range(seq_len))
    for depth in range(1, len(kept)):
        assert len(kept[depth]) <= counts[depth]
        previous = set(kept[depth - 1].tolist())
        assert all(j - 1 in previous for j in kept[depth].tolist()), "a kept mask lost its chain"
        assert int(kept[depth].max()) <= seq_len - 2
    # the paper's 3.4x figure for r=0.7, r_min=0.2, K=8 (minus the few positions that never have a label)
    total = sum(len(k) for k in kept) / seq_len
    assert 3.0 < total < 3.4


def test_cat_weights_hand_computed():
    layout = full_layout(seq_len=5, para_num=3)
    tokens = torch.tensor([10, 11, 12, 13, 14])
    labels = layout.labels(tokens, torch.ones(5, dtype=torch.bool))
    p = torch.tensor([1.0, 0.5, 0.4, 0.3, 0.2])  # p_t = P_target(x_t | x_<t); p_0 unused
    w = cat_weights(layout, p.log(), labels)
    # depth 0: 1 (0 on the ignored last label); depth 1 at j: p_j; depth 2 at j: p_{j-1} p_j
    expected = [1, 1, 1, 1, 0] + [0.5, 0.4, 0.3] + [0.5 * 0.4, 0.4 * 0.3]
    assert w.tolist() == pytest.approx(expected, rel=1e-6)
    # option cat_weight_power: (prod p)^power, depth 0 still 1
    tempered = cat_weights(layout, p.log(), labels, power=0.5)
    assert tempered.tolist() == pytest.approx([x**0.5 for x in expected], rel=1e-6)


def test_kd_term_hand_computed():
    teacher = torch.tensor([[math.log(0.75), math.log(0.25)]])
    student = torch.tensor([[0.0, 0.0]])
    # T=1: KL(p||q) = 0.75 ln(0.75/0.5) + 0.25 ln(0.25/0.5)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kd_per_row(student, teacher, 1.0).item() == pytest.approx(kl, rel=1e-6)
    # T=2 scales logits by 1/2 (p becomes sqrt(.75) : sqrt(.25), normalised) and the
    # result by T^2 = 4; computed in float64 by hand (a float32 softmax is 1e-6 off).
    a, b = math.sqrt(0.75), math.sqrt(0.25)
    p1, p2 = a / (a + b), b / (a + b)
    kl2 = p1 * math.log(p1 / 0.5) + p2 * math.log(p2 / 0.5)
    assert kd_per_row(student, teacher, 2.0).item() == pytest.approx(4 * kl2, rel=1e-6)


def test_weighted_losses_hand_computed():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    ce = [-math.log(math.exp(2) / (math.exp(2) + 1)), math.log(2)]
    assert token_mean_ce(logits, labels).item() == pytest.approx(sum(ce) / 2, rel=1e-6)
    weights = torch.tensor([1.0, 0.25])
    assert weighted_mean(torch.tensor(ce), weights).item() == pytest.approx((ce[0] + 0.25 * ce[1]) / 1.25)
    teacher = logits.clone()  # identical distributions: KD = 0, loss = ce_alpha * CE_w
    loss, parts = pard2_loss(logits, labels, teacher, weights, ce_alpha=0.1, kd_alpha=1.0, temperature=1.0)
    assert parts["kd_w"] == pytest.approx(0.0, abs=1e-7)
    assert loss.item() == pytest.approx(0.1 * (ce[0] + 0.25 * ce[1]) / 1.25, rel=1e-6)


def test_packed_layout_matches_plain_inference_forward():
    """The logits of entry (depth d, position j) equal a plain causal forward of
    x_0..x_{j-d} followed by d masks, i.e. what the draft sees at inference."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    from vllm_pard2.train.layout import additive_mask

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    mask_id, tokens = 63, torch.randint(0, 60, (12,))
    layout = BlockLayout.from_kept(sample_cod_positions(12, 4, 0.7, 0.3, torch.Generator().manual_seed(1)))
    mask = additive_mask(layout.attention_allowed(), torch.float32)[None, None]
    with torch.no_grad():
        packed = model(
            input_ids=layout.input_ids(tokens, mask_id)[None], attention_mask=mask, position_ids=layout.position[None]
        ).logits[0]
        for row, (d, j) in enumerate(zip(layout.depth.tolist(), layout.position.tolist(), strict=True)):
            plain = torch.cat([tokens[: j - d + 1], torch.full((d,), mask_id)])
            expected = model(input_ids=plain[None]).logits[0, -1]
            torch.testing.assert_close(packed[row], expected, rtol=1e-4, atol=1e-4)


def test_config_validation_lists_every_problem(tmp_path):
    with pytest.raises(TrainConfigError, match="did you mean 'para_num'"):
        config_from_dict({"objective": "pard", "output_dir": "o", "data": [], "para_nm": 4}, tmp_path)
    (tmp_path / "d.jsonl").write_text('{"text": "x = 1"}\n')
    with pytest.raises(TrainConfigError) as err:
        config_from_dict(
            {"objective": "pard2", "output_dir": "o", "data": "d.jsonl", "cod_ratio": 2, "cat_weight_power": 0},
            tmp_path,
        )
    message = str(err.value)
    assert "cat_weight_power: must be in (0, 1]" in message
    for fragment in ("target_model", "cod_ratio", "init_model / model"):
        assert fragment in message


def test_pard2_only_keys_are_an_error_for_other_objectives(tmp_path):
    """CAT / KD / feature keys set for ``pard`` or ``ar`` would be silently ignored."""
    (tmp_path / "d.jsonl").write_text('{"text": "x = 1"}\n')
    base = {"objective": "pard", "output_dir": "o", "data": "d.jsonl", "model": {}, "tokenizer": "t"}
    with pytest.raises(TrainConfigError) as err:
        config_from_dict({**base, "cat_depth_norm": True, "cat_weighting": False, "cat_weight_power": 0.5}, tmp_path)
    assert "cat_depth_norm: only the pard2 objective uses it" in str(err.value)
    assert "cat_weight_power: only the pard2 objective uses it" in str(err.value)
    assert "cat_weighting: only the pard2 objective uses it" in str(err.value)
    config_from_dict({**base, "cat_weighting": True}, tmp_path)  # the default value is harmless


def test_runtime_keys_reject_unknown_values_with_the_choices(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "x = 1"}\n')
    base = {"objective": "ar", "output_dir": "o", "data": "d.jsonl", "model": {}, "tokenizer": "t"}
    with pytest.raises(TrainConfigError) as err:
        config_from_dict({**base, "device": "gpu", "precision": "fp16", "attention": "sparse"}, tmp_path)
    message = str(err.value)
    assert "'gpu' is not one of auto, cpu, cuda" in message
    assert "'fp16' is not one of fp32, bf16" in message
    assert "'sparse' is not one of auto, flex, dense" in message
    cfg = config_from_dict({**base, "device": "cpu", "precision": "bf16"}, tmp_path)
    assert (cfg.device, cfg.precision, cfg.attention) == ("cpu", "bf16", "auto")
    with pytest.raises(TrainConfigError, match="no FlexAttention backward on CPU"):
        config_from_dict({**base, "device": "cpu", "attention": "flex"}, tmp_path)


def random_cod_batch(gen: torch.Generator, bsz: int, max_len: int, para_num: int, min_len: int = 3):
    """Padded (depth, position) of random COD layouts (-1 depth = padding) and each sample's layout."""
    layouts = []
    for _ in range(bsz):
        seq_len = int(torch.randint(min_len, max_len + 1, (1,), generator=gen))
        ratio = float(torch.empty(1).uniform_(0.3, 1.0, generator=gen))
        layouts.append(BlockLayout.from_kept(sample_cod_positions(seq_len, para_num, ratio, 0.1, gen)))
    width = max(len(lay) for lay in layouts)
    depth = torch.full((bsz, width), -1, dtype=torch.long)
    position = torch.zeros((bsz, width), dtype=torch.long)
    for b, lay in enumerate(layouts):
        depth[b, : len(lay)], position[b, : len(lay)] = lay.depth, lay.position
    return depth, position, layouts


def expected_batch_mask(layouts: list[BlockLayout], width: int) -> torch.Tensor:
    """Each sample's own rule (BlockLayout.attention_allowed); padding rows see only themselves."""
    expected = torch.eye(width, dtype=torch.bool).repeat(len(layouts), 1, 1)
    for b, lay in enumerate(layouts):
        expected[b, : len(lay), : len(lay)] = lay.attention_allowed()
        expected[b, : len(lay), len(lay) :] = False
    return expected


def test_flex_mask_mod_and_block_mask_equal_the_dense_mask_on_random_cod_layouts():
    from torch.nn.attention.flex_attention import create_mask

    from vllm_pard2.train.attention import dense_mask, flex_block_mask, pard_mask_mod

    gen = torch.Generator().manual_seed(0)
    for trial in range(6):
        depth, position, layouts = random_cod_batch(gen, bsz=3, max_len=40, para_num=2 + 3 * trial)
        width = depth.shape[1]
        expected = expected_batch_mask(layouts, width)
        assert torch.equal(dense_mask(depth, position)[:, 0], expected)
        from_mask_mod = create_mask(pard_mask_mod(depth, position), 3, None, width, width, device="cpu")
        assert torch.equal(from_mask_mod[:, 0], expected)
        # the BlockMask keeps every tile that holds an allowed cell and applies mask_mod inside it
        block = flex_block_mask(depth, position)
        size = block.BLOCK_SIZE[0]
        tiles = block.to_dense()[:, 0].bool()
        q_tile = torch.arange(width) // size
        assert tiles[:, q_tile[:, None], q_tile[None, :]][expected].all()


def test_block_mask_is_sparse_and_flex_attention_matches_sdpa_with_the_dense_mask():
    """Forward only: torch 2.13 has no FlexAttention backward on CPU (training uses it on GPU)."""
    import torch.nn.functional as F
    from torch.nn.attention.flex_attention import flex_attention

    from vllm_pard2.train.attention import dense_mask, flex_block_mask

    gen = torch.Generator().manual_seed(1)
    depth, position, _ = random_cod_batch(gen, bsz=2, max_len=300, para_num=8, min_len=250)
    block = flex_block_mask(depth, position)
    assert block.sparsity() > 30, block  # percent of 128x128 tiles never computed
    q, k, v = (torch.randn(2, 2, depth.shape[1], 16, generator=gen) for _ in range(3))
    with torch.no_grad():
        flex = flex_attention(q, k, v, block_mask=block)
        dense = F.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(depth, position))
    torch.testing.assert_close(flex, dense, rtol=1e-5, atol=1e-5)


def test_equal_mass_per_depth_keeps_ratios_within_a_depth():
    """``cat_depth_norm``: every depth present gets the same total weight, CAT ratios
    within a depth stay, padding stays 0, and the weighted mean becomes the mean over
    depths of per-depth weighted means."""
    from vllm_pard2.train.layout import equal_mass_per_depth
    from vllm_pard2.train.losses import weighted_mean

    depth = torch.tensor([[0, 0, 1, 1, 2, -1], [0, 1, 2, 2, 3, 3]])
    valid = depth >= 0
    weights = torch.tensor([[1.0, 1.0, 0.2, 0.1, 0.001, 0.0], [1.0, 0.3, 0.004, 0.002, 1e-6, 3e-6]])
    norm = equal_mass_per_depth(weights, depth, valid)
    sums = [float(norm[valid & (depth == d)].sum()) for d in range(4)]
    assert sums == pytest.approx([sums[0]] * 4)
    assert sum(sums) == pytest.approx(float(weights[valid].sum()))  # same total: same loss scale
    assert float(norm[0, 5]) == 0.0
    assert float(norm[1, 5] / norm[1, 4]) == pytest.approx(3.0)
    values = torch.rand(depth.shape, dtype=torch.float64)
    per_depth = [weighted_mean(values[valid & (depth == d)], weights[valid & (depth == d)].double()) for d in range(4)]
    assert float(weighted_mean(values[valid], norm[valid].double())) == pytest.approx(float(sum(per_depth) / 4))


def test_weight_mass_by_depth_hand_computed():
    from vllm_pard2.train.progress import shares, weight_sum_by_depth

    sums = weight_sum_by_depth(torch.tensor([1.0, 1.0, 0.5, 0.25, 0.25]), torch.tensor([0, 0, 1, 2, 2]), 4)
    assert sums == pytest.approx([2.0, 0.5, 0.5, 0.0])
    assert shares(sums) == pytest.approx([2 / 3, 1 / 6, 1 / 6, 0.0], abs=1e-6)  # logged rounded
    assert shares([0.0, 0.0]) == [0.0, 0.0]
