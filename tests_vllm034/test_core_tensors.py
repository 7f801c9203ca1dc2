"""The version-independent core's tensor functions against plain references,
under vLLM 0.34's torch (2.14): the 0.34 speculator calls exactly these."""

from __future__ import annotations

import torch

from vllm_pard2.kernels import NO_FEATURE_ROW, PADDING_SLOT_ID, build_draft_inputs, gather_draft_features
from vllm_pard2.proposer.target_features import permute_projection, plan_layers, project


def test_projection_matches_hf_order_reference():
    """``project`` on vLLM's ascending capture (permuted weight, normed -1 block)
    equals ``scale * W @ cat(HF hidden_states[i] for i in layers) + b``."""
    torch.manual_seed(0)
    num_layers, hidden, draft_hidden, tokens, scale = 4, 8, 6, 5, 0.02
    hf_layers = (-1, 1, -4, 1)  # -1: post-norm; repeated index; -4 == layer 1
    norm = torch.nn.RMSNorm(hidden, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    residual = [torch.randn(tokens, hidden) for _ in range(num_layers + 1)]  # after L layers
    hf_states = residual[:num_layers] + [norm(residual[num_layers])]  # HF hidden_states
    weight = torch.randn(draft_hidden, len(hf_layers) * hidden)
    bias = torch.randn(draft_hidden)
    expected = scale * (torch.cat([hf_states[i] for i in hf_layers], dim=-1) @ weight.T + bias)

    plan = plan_layers(hf_layers, num_layers)
    assert plan.aux_layer_ids == (1, 4)
    captured = torch.cat([residual[i] for i in plan.aux_layer_ids], dim=-1)
    got = project(captured, permute_projection(weight, plan, hidden), bias, scale, plan, norm, hidden)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def reference_layout(token_ids, positions, bonus, qsl, rejected, k, mask_id, block_table, block_size):
    """Row by row: [verified | bonus | k-1 masks | rejected pads] per request."""
    rows = []
    for i in range(len(bonus)):
        start, end = qsl[i], qsl[i + 1]
        valid = end - start - rejected[i]
        for j in range(end - start + k):
            pos = positions[start] + j
            if j < valid:
                token, feature = token_ids[start + j], (start + j - 1 if j else NO_FEATURE_ROW)
            elif j == valid:
                token, feature = bonus[i], start + valid - 1
            elif j < valid + k:
                token, feature = mask_id, start + valid - 1
            else:
                rows.append((0, 0, PADDING_SLOT_ID, NO_FEATURE_ROW))
                continue
            slot = block_table[i][pos // block_size] * block_size + pos % block_size
            rows.append((token, pos, slot, feature))
    return rows


def test_draft_layout_and_td_features_match_reference():
    torch.manual_seed(1)
    k, mask_id, block_size = 3, 99, 4
    qsl = [0, 4, 5, 9]  # decode (3 drafts, 1 rejected), prefill chunk of 1, decode (2 rejected)
    rejected = [1, 0, 2]
    positions = [10, 11, 12, 13, 0, 20, 21, 22, 23]
    token_ids = [5, 6, 7, 8, 9, 1, 2, 3, 4]
    bonus = [50, 51, 52]
    block_table = torch.arange(3 * 8).reshape(3, 8)
    seq_lens = torch.tensor([14, 1, 24])
    draft = build_draft_inputs(
        torch.tensor(token_ids, dtype=torch.int32),
        torch.tensor(positions),
        torch.tensor(bonus),
        torch.tensor(qsl, dtype=torch.int32),
        torch.tensor(rejected),
        seq_lens,
        block_table,
        num_speculative_tokens=k,
        mask_token_id=mask_id,
        block_size=block_size,
        max_model_len=1000,
        impl="torch",
    )
    expected = reference_layout(
        token_ids, positions, bonus, qsl, rejected, k, mask_id, block_table.tolist(), block_size
    )
    got = list(
        zip(
            draft.input_ids.tolist(),
            draft.positions.tolist(),
            draft.slot_mapping.tolist(),
            draft.feature_rows.tolist(),
            strict=True,
        )
    )
    assert got == expected
    assert draft.seq_lens.tolist() == (seq_lens + k).tolist()
    # Draft j is read at the bonus row + j.
    starts = [qsl[i] + k * i + (qsl[i + 1] - qsl[i] - rejected[i]) for i in range(3)]
    assert draft.sample_indices.view(3, k).tolist() == [[s + j for j in range(k)] for s in starts]

    # TD: each row gets its feature row's state, the request's first row the
    # carried one, position 0 zero; masks repeat the bonus row's feature.
    target_features = torch.randn(len(token_ids), 2)
    carried = torch.randn(3, 2)
    features = gather_draft_features(draft, target_features, carried)
    for row, (_, pos, _, feature_row) in enumerate(expected):
        request = int(draft.request_of_row[row])
        if pos == 0 and feature_row == NO_FEATURE_ROW:
            want = torch.zeros(2)
        elif feature_row == NO_FEATURE_ROW:
            want = carried[request]
        else:
            want = target_features[feature_row]
        if not draft.is_rejected[row]:
            torch.testing.assert_close(features[row], want)
