"""Non-IID label-skew partitioning: per label, client shares ~ Dirichlet(alpha)."""

from __future__ import annotations

import numpy as np

from fedge.task.data import Example


def dirichlet_split(
    examples: list[Example], num_clients: int, alpha: float = 0.5, seed: int = 0, min_examples: int = 16
) -> list[list[Example]]:
    """Split ``examples`` over clients with Dirichlet(alpha) label proportions.

    Resamples until every client holds at least ``min_examples`` (the usual practice for label-skew splits).
    """
    if num_clients < 1 or alpha <= 0:
        raise ValueError("need num_clients >= 1 and alpha > 0")
    if len(examples) < num_clients * min_examples:
        raise ValueError(f"{len(examples)} examples cannot give {num_clients} clients {min_examples} each")
    rng = np.random.default_rng(seed)
    labels = np.array([example.label for example in examples])
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for label in np.unique(labels):
            indices = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(indices)).astype(int)
            for client, chunk in enumerate(np.split(indices, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(part) for part in parts) >= min_examples:
            return [[examples[i] for i in sorted(part)] for part in parts]
    raise ValueError(f"no Dirichlet({alpha}) split gave every client {min_examples} examples in 1000 draws")


def label_histogram(examples: list[Example], num_labels: int) -> list[int]:
    counts = [0] * num_labels
    for example in examples:
        counts[example.label] += 1
    return counts
