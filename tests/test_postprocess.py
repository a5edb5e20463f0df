"""postprocess: top-k's ranking (ties, NaN, the top-1 shortcut) and softmax."""
import numpy as np
import pytest

from cvzoo.postprocess import predictions_from_logits, softmax, topk


def _ranked(row, k):
    """The definition: largest first, a tie to the lower index, NaN after every number."""
    key = [(1, 0.0, i) if np.isnan(v) else (0, -float(v), i) for i, v in enumerate(row)]
    return [i for _, _, i in sorted(key)[:k]]


@pytest.mark.parametrize("k", [1, 3, 1000])
def test_topk_ranks_largest_first_ties_to_the_lower_index_nan_last(k):
    rng = np.random.default_rng(0)
    rows = [rng.standard_normal(1000).astype(np.float32),
            np.round(rng.standard_normal(1000) * 2).astype(np.float32) / 2,  # many ties, the maximum among them
            np.zeros(1000, np.float32)]
    with_nan = rows[0].copy()
    with_nan[[0, 7, int(with_nan.argmax())]] = np.nan  # argmax alone would pick a NaN
    rows.append(with_nan)
    x = np.stack(rows)
    idx, val = topk(x, k)
    assert idx.shape == val.shape == (len(rows), min(k, 1000))
    for row, got_i, got_v in zip(x, idx, val):
        assert got_i.tolist() == _ranked(row, k)
        np.testing.assert_array_equal(got_v, row[got_i])
    # any leading shape; one row as a vector
    assert topk(x[None], k)[0].tolist() == [idx.tolist()]
    assert topk(x[1], k)[0].tolist() == idx[1].tolist()


def test_predictions_rank_by_logit_with_softmax_probabilities():
    logits = np.array([[0.5, 2.0, 2.0, -1.0], [3.0, 1.0, 0.0, 1.0]], np.float32)
    preds = predictions_from_logits(["a", "b"], logits, ["w", "x", "y", "z"], k=3)
    p = softmax(logits)
    assert [q.ids for q in preds] == [[1, 2, 0], [0, 1, 3]]
    assert [q.names for q in preds] == [["x", "y", "w"], ["w", "x", "z"]]
    np.testing.assert_allclose([q.probs for q in preds], [p[0, [1, 2, 0]], p[1, [0, 1, 3]]], rtol=1e-12)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-12)
