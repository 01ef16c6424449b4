from pathlib import Path

import pytest

from fedge.task.data import read_jsonl, write_jsonl
from fedge.task.wordnet import LABELS, WORDNET_NOUNS, load_splits

needs_wordnet = pytest.mark.skipif(not WORDNET_NOUNS.exists(), reason="Debian package wordnet-base not installed")


@needs_wordnet
def test_splits_are_balanced_disjoint_and_real():
    train, test = load_splits(20, 5, seed=1)
    assert len(train) == 20 * len(LABELS) and len(test) == 5 * len(LABELS)
    assert not {e.text for e in train} & {e.text for e in test}
    assert all(len(e.text) >= 12 and '"' not in e.text for e in train)


def test_jsonl_round_trip_and_bad_lines(tmp_path: Path):
    from fedge.task.wordnet import Example

    path = tmp_path / "d.jsonl"
    write_jsonl(path, [Example("a bird", 0), Example("a tree", 5)])
    assert read_jsonl(path) == [Example("a bird", 0), Example("a tree", 5)]
    path.write_text('{"text": "x", "label": 99}\n')
    with pytest.raises(ValueError, match=":1:"):
        read_jsonl(path)
