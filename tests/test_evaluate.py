"""Retrieval metrics on hand-checkable similarity matrices."""
from __future__ import annotations

import numpy as np
import pytest

from xsearch.evaluate import (mean_rank, median_rank, mean_reciprocal_rank, ranks, recall_at_k, relevance_matrix,
                              retrieval_report, top_k_accuracy)

SIM = np.array([[0.9, 0.1, 0.3],   # right item 0 at rank 1
                [0.8, 0.2, 0.5],   # right item 1 at rank 3
                [0.1, 0.7, 0.6]])  # right item 2 at rank 2


def test_ranks_and_recall_single_target():
    gt = np.array([0, 1, 2])
    assert ranks(SIM, gt).tolist() == [1, 3, 2]
    assert recall_at_k(SIM, gt, (1, 2, 3)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}
    assert mean_rank(SIM, gt) == 2.0 and median_rank(SIM, gt) == 2.0
    assert mean_reciprocal_rank(SIM, gt) == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
    report = retrieval_report(SIM, gt, (1, 5))
    assert report["R@1"] == pytest.approx(1 / 3) and report["R@5"] == 1.0 and report["mean_rank"] == 2.0


def test_several_relevant_items_use_the_best_one():
    assert ranks(SIM, [[1, 2], [2], [0, 1]]).tolist() == [2, 2, 1]
    rel = relevance_matrix([[1, 2], [2], [0, 1]], 3)
    assert rel.tolist() == [[False, True, True], [False, False, True], [True, True, False]]
    assert ranks(SIM, rel).tolist() == [2, 2, 1]
    assert ranks(SIM, [0, 1, 2]).tolist() == [1, 3, 2]  # a plain list of ints
    assert ranks(SIM, [0, [1, 2], 2]).tolist() == [1, 2, 2]  # scalars and lists mixed


def test_ties_count_against_the_query():
    flat = np.zeros((3, 4))
    assert ranks(flat, np.array([0, 1, 2])).tolist() == [4, 4, 4]
    assert recall_at_k(flat, np.array([0, 1, 2]), (1,)) == {1: 0.0}


def test_top_k_accuracy_and_errors():
    scores = np.array([[0.1, 0.5, 0.4], [0.3, 0.2, 0.1]])
    assert top_k_accuracy(scores, [2, 0], (1, 2)) == {1: 0.5, 2: 1.0}
    with pytest.raises(ValueError):
        ranks(SIM, [[], [1], [2]])
    with pytest.raises(ValueError):
        ranks(SIM, np.array([0, 1]))
    with pytest.raises(ValueError):
        ranks(SIM[0], np.array([0]))
