"""The instruct task: conversations read and checked, the loss on answer tokens only, answers scored."""

import json

import pytest
import torch

from fedge.edge_agent.trainer import BatchSampler, train_local
from fedge.lora import build_lora_model, uniform_spec
from fedge.task.data import Dialogue, read_rows
from fedge.task.instruct import dialogues_of, exact_match, problems, token_f1
from fedge.task.instruction import InstructionTuner, encode, render
from fedge.task.next_token import IGNORE
from fedge.task.prefix import FrozenPrefix
from fedge.wire import TaskSpec
from fedge.quantization.backbone import load_backbone, locate_backbone
from tests.tiny_model import build_tiny_backbone

TASK = TaskSpec("instruct", (), "", 64, "token_f1", 4, 4)
DIALOGUES = [Dialogue((("user", "food of animal"), ("assistant", "plant time")), 1), Dialogue((("user", "time"), ("assistant", "body of person"), ("user", "place"), ("assistant", "substance")), 2)]


def test_both_conversation_formats_are_read_and_bad_lines_named(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"instruction": "Add", "input": "2 and 3", "response": "5", "source": "x"}) + "\n" + json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}) + "\n")
    first, second = read_rows(path)
    assert first.messages == (("user", "Add\n\n2 and 3"), ("assistant", "5")) and first.extra == {"source": "x"}
    assert second.messages[-1] == ("assistant", "hello")
    for line, reason in [
        ({"messages": [{"role": "user", "content": "hi"}]}, "last message must be the assistant"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, r"messages\[0\]"),
        ({"instruction": "x"}, "'response' must be a non-empty string"),
        ({"text": "x", "label": 1}, "a labelled-text line in a file of conversation lines"),
    ]:
        path.write_text(json.dumps({"instruction": "a", "response": "b"}) + "\n" + json.dumps(line) + "\n")
        with pytest.raises(ValueError, match=f"{path}:2: .*{reason}"):
            read_rows(path)
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text(json.dumps({"text": "x", "label": "a"}) + "\n")
    with pytest.raises(ValueError, match=f"{labelled}:1: labelled text; an instruct task"):
        dialogues_of(read_rows(labelled), TASK, str(labelled))


def test_the_spec_is_checked_key_by_key():
    assert problems(TASK) == []
    found = problems(TaskSpec("instruct", ("a",), "", 8, "bleu", 0, 0))
    assert [problem.split(":")[0] for problem in found] == ["task.labels", "task.metric", "task.eval_samples", "task.max_new_tokens", "task.max_tokens"]


def test_answers_are_scored_like_squad():
    assert exact_match("The cat.", "cat") == 1.0 and exact_match("a dog", "cat") == 0.0
    assert token_f1("the black cat sat", "a black cat") == pytest.approx(2 * (2 / 3) * 1.0 / (2 / 3 + 1.0))
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


@pytest.fixture
def tuner(tmp_path):
    backbone = build_tiny_backbone(tmp_path / "tiny", text="User Assistant of")  # the plain chat template's words
    model, tokenizer = load_backbone(locate_backbone(str(backbone)))
    return InstructionTuner(FrozenPrefix(build_lora_model(model, uniform_spec(4, 2.0, ["q_proj", "v_proj"], [2, 3])), 2), tokenizer, TASK)


def test_only_answer_tokens_carry_loss_and_every_turn_is_learned(tuner):
    ids, answer, prompt = render(tuner.tokenizer, DIALOGUES[1], "")
    words = tuner.tokenizer.convert_ids_to_tokens(ids)
    assert [word for word, is_answer in zip(words, answer) if is_answer] == ["body", "of", "person", "substance"]
    assert tuner.tokenizer.convert_ids_to_tokens(prompt)[-2:] == ["Assistant", ":"]  # ends with the generation prompt
    data = encode(tuner.tokenizer, DIALOGUES, TASK)
    predicted = [data.input_ids[1, position + 1].item() for position in range(data.lengths[1] - 1) if data.targets[1, position] != IGNORE]
    assert tuner.tokenizer.convert_ids_to_tokens(predicted) == ["body", "of", "person", "substance"]
    assert data.references == ["plant time", "substance"]


def test_chunked_loss_matches_the_full_model_and_trains(tuner):
    data = encode(tuner.tokenizer, DIALOGUES, TASK)
    cache = tuner.runner.cache(data)
    rows = torch.arange(2)
    with torch.no_grad():
        logits = tuner.model(input_ids=data.input_ids).logits
        keep = data.targets != IGNORE
        expected = torch.nn.functional.cross_entropy(logits[keep], data.targets[keep])
        torch.testing.assert_close(tuner.loss(cache, rows), expected, rtol=1e-4, atol=1e-5)
    before = tuner.evaluate(cache)
    train_local(tuner, cache, BatchSampler(2, 0), steps=20, batch_size=2, learning_rate=3e-2)
    after = tuner.evaluate(cache)
    assert after.loss < before.loss and after.metric == "token_f1" and after.perplexity == pytest.approx(torch.tensor(after.loss).exp().item(), rel=1e-4)
    assert 0.0 <= after.accuracy <= 1.0


def test_conversations_beyond_the_token_budget_are_left_out(tuner):
    long = Dialogue((("user", " ".join(["food"] * 80)), ("assistant", "plant")), 3)
    data = encode(tuner.tokenizer, [*DIALOGUES, long], TASK)
    assert len(data) == 2
    with pytest.raises(ValueError, match="no conversation has an answer within task.max_tokens 64"):
        encode(tuner.tokenizer, [long], TASK)


def test_a_line_over_the_bound_is_refused_with_file_and_line_before_it_is_read_whole(tmp_path):
    import tracemalloc

    path = tmp_path / "data.jsonl"
    with path.open("w") as handle:
        handle.write(json.dumps({"text": "short", "label": "a"}) + "\n")
        handle.write(json.dumps({"text": "word " * 4_000_000, "label": "a"}) + "\n")  # 20 MB on one line
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=rf"{path}:2: longer than 1048576 bytes"):
            read_rows(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # the line was never held whole
    assert len(read_rows(path, max_line_bytes=32 << 20)) == 2
    path.write_bytes(b'{"text": "\xff", "label": "a"}\n')
    with pytest.raises(ValueError, match=f"{path}:1: not UTF-8"):
        read_rows(path)


def test_a_long_text_is_cut_before_it_is_tokenized(tmp_path):
    from fedge.task.classifier import MAX_CHARS_PER_TOKEN, _prompts
    from fedge.task.data import Example

    class CountingTokenizer:
        longest = 0

        def encode(self, text, add_special_tokens=False):
            CountingTokenizer.longest = max(CountingTokenizer.longest, len(text))
            return [1] * len(text.split())

    task = TaskSpec("classify", ("a", "b"), "Text: {text} Label:", 32)
    (row,) = _prompts(CountingTokenizer(), [Example("word " * 200_000, 0)], task, 1)
    assert len(row) == 31 and CountingTokenizer.longest <= 32 * MAX_CHARS_PER_TOKEN + len(task.prompt)


def test_a_templates_default_system_prompt_is_dropped_and_the_budget_message_counts_the_template(tuner, caplog):
    from fedge.task.instruction import PLAIN_TEMPLATE, template_cost

    tokenizer = tuner.tokenizer
    tokenizer.chat_template = "{% if messages[0]['role'] != 'system' %}System: food of animal of plant of time of body{{ '\\n' }}{% endif %}" + PLAIN_TEMPLATE
    ids, _, _ = render(tokenizer, DIALOGUES[0], "")
    assert tokenizer.decode(ids).startswith("[UNK] : User : food") and "body" not in tokenizer.decode(ids)  # an empty system message ("System" is unknown to the tiny vocabulary)
    cost = template_cost(tokenizer, "")
    assert cost.dropped_system_tokens == 9 and "default system prompt (9 tokens) is dropped" in cost.describe()
    own, _, _ = render(tokenizer, DIALOGUES[0], "time of body")
    assert tokenizer.decode(own).startswith("[UNK] : time of body User") and template_cost(tokenizer, "time of body").dropped_system_tokens == 0
    long = Dialogue((("user", " ".join(["food"] * 80)), ("assistant", "plant")), 3)
    with caplog.at_level("WARNING"):
        encode(tokenizer, [*DIALOGUES, long], TASK)
    assert f"1 of 3 conversations have no answer within task.max_tokens 64 and are left out (the chat template adds {cost.added_tokens} tokens" in caplog.text
