from pathlib import Path

import pytest

from fedge.task.classify import examples_of, histogram
from fedge.task.kinds import task_problems
from fedge.task.data import Example, label_counts, read_rows, write_jsonl
from fedge.task.wordnet import LABELS, WORDNET_NOUNS, WORDNET_TASK, load_splits
from fedge.wire import TaskSpec

needs_wordnet = pytest.mark.skipif(not WORDNET_NOUNS.exists(), reason="Debian package wordnet-base not installed")


@needs_wordnet
def test_splits_are_balanced_disjoint_and_real():
    train, test = load_splits(20, 5, seed=1)
    assert len(train) == 20 * len(LABELS) and len(test) == 5 * len(LABELS)
    assert not {e.text for e in train} & {e.text for e in test}
    assert all(len(e.text) >= 12 and '"' not in e.text for e in train)


def test_jsonl_round_trip_with_indices_or_label_strings(tmp_path: Path):
    path = tmp_path / "d.jsonl"
    examples = [Example("a bird", 0), Example("a tree", 5)]
    write_jsonl(path, examples)
    assert examples_of(read_rows(path), WORDNET_TASK, str(path)) == examples
    write_jsonl(path, examples, labels=LABELS)
    assert [row.label for row in read_rows(path)] == ["animal", "plant"]
    assert examples_of(read_rows(path), WORDNET_TASK, str(path)) == examples


@pytest.mark.parametrize(
    ("line", "reason"),
    [("{not json", ":2: not JSON"), ('{"text": "x"}', ":2: expected an object with 'text' and 'label'"),
     ('{"text": "", "label": 1}', ":2: 'text' must be a non-empty string"), ('{"text": "x", "label": true}', ":2: 'label' must be")],
)
def test_bad_lines_are_reported_with_file_and_line(tmp_path: Path, line, reason):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "fine", "label": 0}\n' + line + "\n")
    with pytest.raises(ValueError, match=reason):
        read_rows(path)


def test_a_label_the_task_lacks_names_the_file_line_and_the_labels(tmp_path: Path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "x", "label": "animal"}\n{"text": "y", "label": "vehicle"}\n{"text": "z", "label": 99}\n')
    with pytest.raises(ValueError, match=r"d.jsonl:2: label 'vehicle' is not one of the task's 8 labels \('animal'"):
        examples_of(read_rows(path), WORDNET_TASK, str(path))
    rows = read_rows(path)
    assert label_counts(rows) == {"animal": 1, "vehicle": 1, "99": 1}
    assert histogram({"animal": 2, "7": 3, "vehicle": 1, "99": 4}, WORDNET_TASK) == (2, 0, 0, 0, 0, 0, 0, 3)


def test_task_specs_are_checked_key_by_key():
    assert task_problems(WORDNET_TASK) == []
    problems = task_problems(TaskSpec("classify", ("a", "a"), "no placeholder", 4))
    assert [p.split(":")[0] for p in problems] == ["task.labels", "task.prompt", "task.max_tokens"]
    assert task_problems(TaskSpec("regress", ("a", "b"), "{text}"))[0].startswith("task.kind: 'regress' is not a task kind")
