import pytest

from fedge.task.split import dirichlet_split, label_histogram
from fedge.task.data import Example


def _examples(per_label=50, labels=8):
    return [Example(f"t{label}-{i}", label) for label in range(labels) for i in range(per_label)]


def test_split_is_a_reproducible_partition_with_a_minimum_per_client():
    examples = _examples()
    parts = dirichlet_split(examples, 4, alpha=0.5, seed=3, min_examples=20)
    assert sorted(e.text for part in parts for e in part) == sorted(e.text for e in examples)
    assert min(len(part) for part in parts) >= 20
    assert parts == dirichlet_split(examples, 4, alpha=0.5, seed=3, min_examples=20)


def test_small_alpha_skews_labels_more_than_large_alpha():
    def skew(alpha):
        parts = dirichlet_split(_examples(200), 4, alpha=alpha, seed=0, min_examples=1)
        return sum(max(label_histogram(p, 8)) / len(p) for p in parts) / 4

    assert skew(0.1) > skew(100.0) + 0.2


def test_impossible_split_is_refused():
    with pytest.raises(ValueError):
        dirichlet_split(_examples(1), 4, min_examples=10)
