"""An operator's own classification task, named only in the coordinator's config: agents learn it from their
assignments, read string labels, and one whose data has a label the task lacks says which file and line."""

import json
import math

import pytest

from tests.integration.helpers import fleet_config, run_fleet
from tests.tiny_model import build_tiny_backbone

pytestmark = pytest.mark.broker

TASK = {"kind": "classify", "labels": ["love", "work", "science"], "prompt": "Fortune : {text} Topic :", "max_tokens": 24}
WORDS = ["kiss", "heart", "boss", "desk", "atom", "star"]


def _write(path, labels):
    path.write_text("".join(json.dumps({"text": f"{WORDS[i % 6]} {WORDS[(i + 1) % 6]}", "label": label}) + "\n" for i, label in enumerate(labels)))


def test_agents_train_the_task_their_assignment_names(mosquitto, tmp_path):
    backbone = build_tiny_backbone(tmp_path / "tiny", text=" ".join(TASK["labels"] + WORDS) + " " + TASK["prompt"])
    _write(tmp_path / "test.jsonl", ["love", "work", "science", 0, 1, 2])
    _write(tmp_path / "a0.jsonl", ["love", "work", "science", "love", 1, 2] * 3)
    _write(tmp_path / "a1.jsonl", ["love", "work", "vehicle", "science"])
    config = fleet_config(tmp_path, mosquitto.url, backbone, min_clients=1, planner={"max_depth": 2, "ranks": [2]}, task=TASK)
    record = run_fleet(tmp_path, config, agents=2)[-1]
    assert record["round"] == 1 and record["contributors"] == ["a0"]
    assert "a1.jsonl:3: label 'vehicle' is not one of the task's 3 labels" in record["rejected"]["a1"]
    assert len(record["per_class_f1"]) == 3 and record["macro_f1"] == pytest.approx(sum(record["per_class_f1"]) / 3, abs=1e-3)


def test_an_instruct_run_trains_on_answers_and_scores_generated_ones(mosquitto, tmp_path):
    words = ["kiss", "heart", "boss", "desk", "atom", "star"]
    backbone = build_tiny_backbone(tmp_path / "tiny", text=" ".join(words) + " User Assistant System")
    def chat(path, count, offset):
        path.write_text("".join(json.dumps({"instruction": f"{words[(i + offset) % 6]} {words[(i + 1) % 6]}", "response": words[(i + 2) % 6]}) + "\n" for i in range(count)))
    chat(tmp_path / "test.jsonl", 6, 0)
    chat(tmp_path / "a0.jsonl", 12, 1)
    (tmp_path / "a1.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "atom"}, {"role": "assistant", "content": "star"}]}) + "\n")
    task = {"kind": "instruct", "max_tokens": 32, "eval_samples": 3, "max_new_tokens": 3, "metric": "exact_match"}
    config = fleet_config(tmp_path, mosquitto.url, backbone, rounds=2, planner={"max_depth": 2, "ranks": [2]}, task=task)
    records = run_fleet(tmp_path, config, agents=2)
    assert [record["round"] for record in records] == [0, 1, 2] and records[-1]["contributors"] == ["a0", "a1"]
    for record in records:
        assert record["metric"] == "exact_match" and 0 <= record["accuracy"] <= 1
        assert record["perplexity"] == pytest.approx(math.exp(record["loss"]), rel=1e-3)
    assert records[-1]["client_metrics"]["a1"]["prefix_rows"] + records[-2]["client_metrics"]["a1"]["prefix_rows"] <= 1
