"""Loss and mean token accuracy against hand computations and a float64 reference."""

from __future__ import annotations

import math

import pytest
import torch

from peftlab.metrics import (
    IGNORE_INDEX,
    causal_lm_terms,
    classification_terms,
    count_targets,
    mean_token_accuracy,
)


def test_mean_token_accuracy_matches_hand_count() -> None:
    # vocabulary of 4; logits[b, t] predicts labels[b, t + 1]
    logits = torch.zeros(2, 4, 4)
    # row 0 predicts 1, 2, 3, (last position unused)
    for t, token in enumerate([1, 2, 3, 0]):
        logits[0, t, token] = 5.0
    # row 1 predicts 0, 0, 1, (unused)
    for t, token in enumerate([0, 0, 1, 2]):
        logits[1, t, token] = 5.0
    labels = torch.tensor(
        [
            [IGNORE_INDEX, 1, 0, 3],  # targets 1 (right), 0 (wrong: predicted 2), 3 (right)
            [IGNORE_INDEX, IGNORE_INDEX, 0, 2],  # targets -, 0 (right: predicted 0), 2 (wrong: predicted 1)
        ]
    )
    # by hand: 3 right out of 5 targets
    assert mean_token_accuracy(logits, labels) == pytest.approx(3 / 5)
    terms = causal_lm_terms(logits, labels)
    assert (terms.correct, terms.count) == (3, 5)
    assert count_targets(labels) == 5


def test_loss_matches_float64_reference_and_ignores_masked_positions() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 7, 11, generator=generator)
    labels = torch.randint(0, 11, (3, 7), generator=generator)
    labels[0, :4] = IGNORE_INDEX
    labels[2, 5:] = IGNORE_INDEX
    terms = causal_lm_terms(logits, labels)
    expected, count = 0.0, 0
    for b in range(3):
        for t in range(6):
            target = int(labels[b, t + 1])
            if target == IGNORE_INDEX:
                continue
            row = logits[b, t].double()
            expected += float(torch.logsumexp(row, 0) - row[target])
            count += 1
    assert terms.count == count
    assert float(terms.loss_sum) == pytest.approx(expected, rel=1e-6)


def test_leading_virtual_token_logits_are_dropped() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 5, 9, generator=generator)
    labels = torch.randint(0, 9, (2, 5), generator=generator)
    virtual = torch.randn(2, 3, 9, generator=generator)  # e.g. prompt tuning's 3 virtual positions
    with_virtual = causal_lm_terms(torch.cat([virtual, logits], dim=1), labels)
    plain = causal_lm_terms(logits, labels)
    assert float(with_virtual.loss_sum) == pytest.approx(float(plain.loss_sum))
    assert (with_virtual.correct, with_virtual.count) == (plain.correct, plain.count)


def test_logits_shorter_than_labels_are_rejected() -> None:
    with pytest.raises(ValueError, match="fewer than"):
        causal_lm_terms(torch.zeros(1, 3, 4), torch.zeros(1, 4, dtype=torch.long))


def test_classification_terms_match_hand_computation() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0]])
    labels = torch.tensor([0, 0, 0])
    terms = classification_terms(logits, labels)
    expected = sum(math.log(math.exp(a) + math.exp(b)) - a for a, b in logits.tolist())
    assert float(terms.loss_sum) == pytest.approx(expected, rel=1e-6)
    assert (terms.correct, terms.count) == (2, 3)
    assert count_targets(labels) == 3
