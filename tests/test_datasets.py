"""The packaged datasets: chatterbot-corpus conversations split by topic, fortunes entries labelled by category."""

from collections import Counter

from fedge.task.chatterbot import load_pairs, split_by_topic
from fedge.task.classifier import label_token_ids
from fedge.task.fortunes import FORTUNES_TASK, LABELS, load_examples, read_entries
from fedge.quantization.backbone import load_backbone, locate_backbone


def test_chatterbot_pairs_split_by_topic_into_non_iid_shards():
    topics = load_pairs()
    assert len(topics) == 21 and sum(len(pairs) for pairs in topics.values()) > 2000
    assert all(pair.messages[0][0] == "user" and pair.messages[1][0] == "assistant" for pairs in topics.values() for pair in pairs)
    shards, test = split_by_topic(topics, devices=4, test_fraction=0.1, seed=0)
    assert sum(map(len, shards)) + len(test) == sum(len(pairs) for pairs in topics.values())
    holders = {topic: {index for index, shard in enumerate(shards) if any(pair.extra["topic"] == topic for pair in shard)} for topic in topics}
    assert all(len(devices) <= 1 for devices in holders.values())  # each topic's training pairs sit on one device
    assert len({pair.extra["topic"] for pair in test}) >= 15
    assert split_by_topic(topics, 4, 0.1, seed=0) == (shards, test)


def test_fortunes_entries_are_split_on_percent_lines(tmp_path):
    (tmp_path / "food").write_text("Eat  your\n\tgreens.\n%\n%\n" + "x" * 400 + "\n%\nPie.\n%\n")
    assert read_entries("food", tmp_path) == ["Eat your greens.", "Pie."]
    examples = load_examples(seed=0)
    counts = Counter(LABELS[example.label] for example in examples)
    assert set(counts) == set(LABELS) and min(counts.values()) >= 50


def test_fortunes_labels_start_with_distinct_tokens_in_smollm2():
    _, tokenizer = load_backbone(locate_backbone("smollm2-135m-instruct"))
    assert len(set(label_token_ids(tokenizer, FORTUNES_TASK.labels))) == len(LABELS)
