"""SSCD: its loss against a plain-loop reference, the closed forms of its KoLeo term and of its
multi-positive InfoNCE, and the positives of mixed images (SSCD's definition) on hand-made batches."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_methods_support import (  # noqa: F401  (one_thread: autouse fixture)
    build,
    context,
    fixed_batch,
    images,
    one_thread,
)
from torch import nn

from methods.losses import multi_positive_info_nce, nearest_neighbour_entropy
from methods.mixup import cutmix_box, mix_across_batch, mixed_sources, sources_match
from methods.sscd import SSCDConfig


def _loop_reference(embedding, sources, temperature, entropy_weight):
    """SSCD's loss written out: for each embedding i, each other embedding sharing a source is a
    positive scored against i's non-matching embeddings; plus the weight times -mean log of the
    distance to the nearest non-matching embedding."""
    z = embedding.detach().double()
    n = len(z)
    shares = [[bool(set(sources[i]) & set(sources[j])) for j in range(n)] for i in range(n)]
    infonce, entropy = 0.0, 0.0
    for i in range(n):
        negatives = [j for j in range(n) if not shares[i][j]]
        positives = [j for j in range(n) if shares[i][j] and j != i]
        negative_sum = sum(math.exp(float(z[i] @ z[j]) / temperature) for j in negatives)
        terms = []
        for p in positives:
            positive = math.exp(float(z[i] @ z[p]) / temperature)
            terms.append(-math.log(positive / (positive + negative_sum)))
        infonce += sum(terms) / max(len(terms), 1)
        nearest = min(float((z[i] - z[j]).norm()) for j in negatives)
        entropy += -math.log(nearest)
    return infonce / n, entropy / n, infonce / n + entropy_weight * entropy / n


def test_sscd_loss_is_infonce_plus_weighted_koleo_against_a_loop():
    config = SSCDConfig(temperature=0.05, entropy_weight=2.5)
    method = build("sscd", config).eval()  # eval: BatchNorm is fixed
    batch = fixed_batch(images(24), torch.tensor([3, 7, 1, 12, 5, 20, 9, 0]), seed=0)
    loss, logs = method.training_step(batch, 0)
    embedding = method.encoder(torch.cat(batch.views))
    ids = batch.indices.tolist() * 2
    infonce, entropy, total = _loop_reference(embedding, [[i] for i in ids], 0.05, 2.5)
    assert loss.item() == pytest.approx(total, rel=1e-5)
    assert logs["infonce"] == pytest.approx(infonce, rel=1e-5)
    assert logs["entropy"] == pytest.approx(entropy, rel=1e-5)
    assert method.negatives_per_step() == 2 * 8 - 2


def test_sscd_mixup_step_scores_mixed_images_against_every_source():
    config = SSCDConfig(mixup=True, mix_probability=0.5, entropy_weight=1.0)
    method = build("sscd", config).eval()
    batch = fixed_batch(images(24), torch.arange(8), seed=1)
    loss, _ = method.training_step(batch, 3)
    # The draws are the run seed's at this step: the same mix again, by hand
    mixed, partner, weight = method.mix(torch.cat(batch.views), 3)
    assert 0 < int((weight < 1).sum()) < 16  # some images mixed, some not
    ids = batch.indices.tolist() * 2
    sources = [
        [
            s
            for s, share in ((ids[i], weight[i]), (ids[int(partner[i])], 1 - weight[i]))
            if share > 0
        ]
        for i in range(16)
    ]
    _, _, total = _loop_reference(method.encoder(mixed), sources, 0.05, 1.0)
    assert loss.item() == pytest.approx(total, rel=1e-5)


def test_koleo_closed_form_on_the_unit_circle():
    # Unit vectors at 0, 60 and 180 degrees: nearest distances 1 (0-60), 1 (60-0), sqrt 3 (180-60).
    angles = torch.tensor([0.0, math.pi / 3, math.pi], dtype=torch.float64)
    z = torch.stack([angles.cos(), angles.sin()], dim=1)
    others = ~torch.eye(3, dtype=torch.bool)
    koleo = nearest_neighbour_entropy(z @ z.T, others)
    assert koleo.item() == pytest.approx(-math.log(3) / 6, rel=1e-9)
    # Points 0 and 1 are copies of one image: each one's nearest non-match is then point 2.
    non_matches = torch.tensor([[0, 0, 1], [0, 0, 1], [1, 1, 0]], dtype=torch.bool)
    koleo = nearest_neighbour_entropy(z @ z.T, non_matches)
    assert koleo.item() == pytest.approx(-(math.log(2) + math.log(3)) / 3, rel=1e-9)


def test_multi_positive_info_nce_closed_form():
    logits = torch.tensor([[9.0, 1.0, 2.0, 3.0], [0.5, 9.0, -1.0, 2.0], [1.0, 2.0, 9.0, 0.0]])
    positives = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.bool)
    negatives = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 0], [1, 1, 0, 1]], dtype=torch.bool)
    e = math.exp
    row0 = math.log(e(1) + e(2) + e(3)) - 1
    row1 = ((math.log(e(0.5) + e(-1)) - 0.5) + (math.log(e(2) + e(-1)) - 2)) / 2
    row2 = 0.0  # no positive: counts 0, and the mean stays over the 3 rows
    loss = multi_positive_info_nce(logits, positives, negatives)
    assert loss.item() == pytest.approx((row0 + row1 + row2) / 3, rel=1e-6)


def test_mixup_positives_on_a_hand_made_batch():
    # Two views of images 10, 11, 12: [10, 11, 12 | 10, 11, 12]; partners mirror: 0-5, 1-4, 2-3.
    ids = torch.tensor([10, 11, 12, 10, 11, 12])
    partner = torch.arange(5, -1, -1)
    # 0 keeps 60% of itself and takes 40% of 5 (image 12); 3 is all its partner 2 (image 12).
    weight = torch.tensor([0.6, 1.0, 1.0, 0.0, 1.0, 1.0])
    sources = mixed_sources(ids, partner, weight)
    assert [set(row) for row in sources.tolist()] == [{10, 12}, {11}, {12}, {12}, {11}, {12}]
    expected = torch.tensor(
        [
            [1, 0, 1, 1, 0, 1],  # {10, 12}: every image holding 12; no other holds 10
            [0, 1, 0, 0, 1, 0],
            [1, 0, 1, 1, 0, 1],
            [1, 0, 1, 1, 0, 1],
            [0, 1, 0, 0, 1, 0],
            [1, 0, 1, 1, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(sources_match(sources, sources), expected)


def test_mixup_matches_are_sscds_overlapping_labels():
    # SSCD: label_i = lam_i onehot(i) + (1 - lam_i) onehot(partner_i); match when label_i . label_j > 0
    generator = torch.Generator().manual_seed(5)
    ids = torch.randperm(40, generator=generator)[:10].repeat(2)
    partner = torch.arange(19, -1, -1)
    weight = torch.rand(20, generator=generator, dtype=torch.float64)
    weight[[0, 3, 7]] = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)
    labels = weight[:, None] * F.one_hot(ids, 40) + (1 - weight[:, None]) * F.one_hot(
        ids[partner], 40
    )
    sources = mixed_sources(ids, partner, weight)
    assert torch.equal(sources_match(sources, sources), labels @ labels.T > 0)


def test_mix_across_batch_mixup_cutmix_and_none():
    batch = images(6)
    mirror = batch.flip(0)
    mixed, partner, weight = mix_across_batch(
        batch, torch.Generator().manual_seed(0), probability=1.0, alpha=2.0, cutmix_share=0.0
    )
    assert torch.equal(partner, torch.arange(5, -1, -1))
    assert ((weight > 0) & (weight < 1)).all()
    w = weight.float()[:, None, None, None]
    torch.testing.assert_close(mixed, w * batch + (1 - w) * mirror)

    mixed, _, weight_cutmix = mix_across_batch(
        batch, torch.Generator().manual_seed(1), probability=1.0, alpha=2.0, cutmix_share=1.0
    )
    own = (mixed == batch).all(dim=1)  # per pixel: the image's own content or its partner's
    assert ((mixed == mirror).all(dim=1) | own).all()
    own_share = own.flatten(1).float().mean(dim=1).double()
    torch.testing.assert_close(own_share, weight_cutmix)
    assert (weight_cutmix < 1).any()

    untouched, _, unmixed = mix_across_batch(
        batch, torch.Generator().manual_seed(2), probability=0.0, alpha=2.0, cutmix_share=0.5
    )
    assert torch.equal(untouched, batch) and (unmixed == 1).all()
    same_seed = mix_across_batch(
        batch, torch.Generator().manual_seed(1), probability=1.0, alpha=2.0, cutmix_share=1.0
    )
    assert torch.equal(same_seed[0], mixed) and torch.equal(same_seed[2], weight_cutmix)


def test_cutmix_box_is_clipped_at_the_borders():
    # lam 0.75: sides half the image's (5 of 10), centred at row 0, column 9
    assert cutmix_box(10, 10, 0.75, (0, 9)) == (0, 2, 7, 10)
    assert cutmix_box(10, 10, 0.75, (5, 5)) == (3, 7, 3, 7)


def test_linear_projection_is_sscds_single_layer():
    method = build("sscd", SSCDConfig(projection="linear"))
    assert isinstance(method.encoder.head, nn.Linear)
    assert method.encoder.head.out_features == 16
    ctx = context()
    ctx.head_batch_norm = True  # the protocol's head BatchNorm: the ISC winner's Linear + BN
    head = build("sscd", SSCDConfig(projection="linear"), ctx).encoder.head
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d] and head[0].bias is None
    mlp = build("sscd", SSCDConfig(projection="mlp")).encoder.head
    assert sum(isinstance(m, nn.Linear) for m in mlp.modules()) == 2
