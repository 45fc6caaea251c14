"""The shared SASRec encoder: causality, padding, initialisation, published parameter names."""

from __future__ import annotations

import pytest
import torch

from methods.encoder import SASRecEncoder
from tests.conftest import REFERENCE_CHECKPOINT


def _encoder(**kw):
    torch.manual_seed(0)
    return SASRecEncoder(item_size=50, num_layers=2, **kw).eval()


def test_changing_a_later_item_leaves_earlier_outputs_unchanged():
    enc = _encoder()
    ids = torch.tensor([[0, 0, 3, 7, 9, 11, 4, 2]])
    changed = ids.clone()
    changed[0, 5] = 30
    a, b = enc(ids), enc(changed)
    assert torch.allclose(a[0, 2:5], b[0, 2:5], atol=1e-6)  # real positions before the change
    assert not torch.allclose(a[0, 5:], b[0, 5:], atol=1e-4)
    # Published quirk kept: a padding query has every key masked by the same -10000, so its softmax falls
    # back to the raw scores of all keys, later ones included. Padding outputs therefore do change.
    assert not torch.allclose(a[0, :2], b[0, :2], atol=1e-6)


def test_padding_keys_are_ignored():
    enc = _encoder()
    ids = torch.tensor([[0, 0, 0, 5, 6, 7]])
    out = enc(ids)
    # Changing the (padding) embedding row must not change the outputs at real positions.
    with torch.no_grad():
        enc.item_embeddings.weight[0] += torch.randn(64)  # not a constant: LayerNorm would cancel it
    out2 = enc(ids)
    assert torch.allclose(out[0, 3:], out2[0, 3:], atol=1e-6)
    assert not torch.allclose(out[0, :3], out2[0, :3], atol=1e-4)


def test_initialisation_matches_spec():
    enc = _encoder(hidden=64)
    w = enc.item_embeddings.weight
    assert abs(w.std().item() - 0.02) < 0.002 and w[0].abs().sum() > 0  # padding row overwritten too
    lin = enc.item_encoder.layer[0].attention.query
    assert torch.all(lin.bias == 0) and abs(lin.weight.std().item() - 0.02) < 0.004
    ln = enc.item_encoder.layer[0].intermediate.LayerNorm
    assert torch.all(ln.weight == 1) and ln.eps == 1e-12


def test_padding_row_gets_no_gradient():
    enc = _encoder().train()
    out = enc(torch.tensor([[0, 0, 3, 4]]))
    out.sum().backward()
    assert torch.all(enc.item_embeddings.weight.grad[0] == 0)


def test_state_dict_has_the_published_names():
    published = torch.load(REFERENCE_CHECKPOINT, map_location="cpu")
    enc = SASRecEncoder(item_size=12103, num_layers=1)
    ours = enc.state_dict()
    assert list(ours) and set(ours) == set(published)
    assert all(ours[k].shape == published[k].shape for k in ours)
    assert SASRecEncoder.num_layers_in(published) == 1


def test_encode_last_equals_the_last_position_of_forward():
    enc = _encoder()
    ids = torch.randint(0, 50, (16, 50))
    ids[:4, :30] = 0  # some left padding
    assert torch.allclose(enc.encode_last(ids), enc(ids)[:, -1], atol=1e-5)


def test_fast_dropout_keeps_each_element_with_probability_1_minus_p():
    from methods.encoder import Dropout, dropout_scale

    for p in (0.5, 0.3):
        scale = dropout_scale(torch.Size([400, 50, 64]), p, torch.device("cpu"), torch.float32)  # 1.28M draws
        assert scale.unique().tolist() == pytest.approx([0.0, 1 / (1 - p)])
        mask = (scale > 0).float()
        assert abs(mask.mean().item() - (1 - p)) < 0.003
        # elements are independent: P(both kept) = (1 - p)^2 for neighbours, and for elements 8 apart
        # (the next random byte), whose lookups come from different rows of the table
        flat = mask.flatten()
        for gap in (1, 8):
            both = (flat[:-gap] * flat[gap:]).mean().item()
            assert abs(both - (1 - p) ** 2) < 0.003, (p, gap)
    drop = Dropout(0.5).train()
    x = torch.ones(1000, 64)
    y = drop(x)
    assert set(y.unique().tolist()) == {0.0, 2.0}  # inverted dropout: kept values scaled by 1 / (1 - p)
    assert torch.equal(drop.eval()(x), x)


def test_cutting_all_padding_columns_leaves_the_outputs_unchanged():
    """What evaluation relies on: padded keys get weight 0 and positions are right-aligned."""
    enc = _encoder()
    ids = torch.randint(1, 50, (16, 50))
    ids[:, :35] = 0  # 35 leading columns of padding in every row
    ids[:8, 35:40] = 0  # and more in some rows
    full_width = enc.encode_last(ids)
    for cut in (10, 35):
        assert torch.allclose(enc.encode_last(ids[:, cut:]), full_width, atol=1e-6)
    assert not torch.allclose(enc.encode_last(ids[:, 36:]), full_width, atol=1e-3)  # cutting an item does change it
