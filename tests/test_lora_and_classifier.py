"""LoRA construction, adapter (de)serialisation and the frozen-prefix split, on a tiny random Llama."""

import logging

import numpy as np
import pytest
import torch

from fedge.edge_agent.trainer import BatchSampler, StepProgress, train_local
from fedge.lora import adapter_arrays, build_lora_model, load_adapter_arrays, parse_adapter_key, uniform_spec
from fedge.wire import LoraSpec, TaskSpec
from fedge.deploy.evaluate import evaluate_model
from fedge.deploy.onnx import TorchCausalLM
from fedge.task.classifier import Classifier, LikelihoodClassifier, classifier_for, encode, label_token_ids
from fedge.task.prefix import FrozenPrefix
from fedge.task.data import Example, Row
from fedge.task.wordnet import LABELS, WORDNET_TASK
from fedge.quantization.backbone import load_backbone, locate_backbone

EXAMPLES = [Example("food animal plant time", i % 8) for i in range(12)]


@pytest.fixture
def tiny(tiny_backbone):
    return load_backbone(locate_backbone(str(tiny_backbone)))


def test_lora_sits_only_on_the_assigned_layers_and_modules(tiny):
    model, _ = tiny
    peft_model = build_lora_model(model, uniform_spec(4, 2.0, ["q_proj", "v_proj"], [2, 3]))
    arrays = adapter_arrays(peft_model)
    assert {parse_adapter_key(key)[:2] for key in arrays} == {(layer, f"self_attn.{m}") for layer in (2, 3) for m in ("q_proj", "v_proj")}
    assert {arrays[key].shape for key in arrays if key.endswith("lora_A.weight") and "q_proj" in key} == {(4, 32)}


def test_a_rank_profile_gives_each_layer_its_rank_and_the_same_scaling(tiny):
    model, _ = tiny
    peft_model = build_lora_model(model, LoraSpec(("q_proj", "v_proj"), (1, 2, 3), (2, 4, 8), 2.0))
    ranks = {parse_adapter_key(key)[0]: value.shape[0] for key, value in adapter_arrays(peft_model).items() if key.endswith("lora_A.weight")}
    assert ranks == {1: 2, 2: 4, 3: 8}
    scalings = {module.scaling["default"] for name, module in peft_model.named_modules() if hasattr(module, "scaling") and isinstance(module.scaling, dict) and module.scaling}
    assert scalings == {2.0}


def test_a_lora_spec_without_one_rank_per_layer_is_refused(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="one rank per layer"):
        build_lora_model(model, LoraSpec(("q_proj",), (2, 3), (4,), 2.0))


def test_adapter_arrays_round_trip_and_shape_errors(tiny):
    model, _ = tiny
    peft_model = build_lora_model(model, uniform_spec(4, 2.0, ["q_proj"], [3]))
    arrays = {key: np.random.default_rng(0).normal(size=value.shape).astype(np.float32) for key, value in adapter_arrays(peft_model).items()}
    load_adapter_arrays(peft_model, arrays)
    for key, value in adapter_arrays(peft_model).items():
        np.testing.assert_allclose(value, arrays[key], rtol=1e-6)
    bad = {key: value[:2] for key, value in arrays.items()}
    with pytest.raises(ValueError, match="shape"):
        load_adapter_arrays(peft_model, bad)
    with pytest.raises(ValueError, match="keys differ"):
        load_adapter_arrays(peft_model, {})


def test_cached_prefix_gives_the_full_forward_logits(tiny):
    model, tokenizer = tiny
    labels = label_token_ids(tokenizer, LABELS)
    data = encode(tokenizer, EXAMPLES, WORDNET_TASK)
    with torch.no_grad():
        full = model(data.input_ids).logits[torch.arange(len(EXAMPLES)), data.lengths - 1][:, labels]
        for start in (1, 3):
            classifier = Classifier(FrozenPrefix(model, start), labels)
            cache = classifier.runner.cache(data)
            np.testing.assert_allclose(classifier.logits(cache, torch.arange(len(EXAMPLES))), full, atol=1e-5)
            shuffled = torch.tensor([5, 0, 11, 3])  # rows of other lengths padded together, cached in another order
            np.testing.assert_allclose(classifier.logits(cache, shuffled), full[shuffled], atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    model, tokenizer = tiny
    data = encode(tokenizer, EXAMPLES, WORDNET_TASK)
    peft_model = build_lora_model(model, uniform_spec(4, 2.0, ["q_proj", "v_proj"], [2, 3]), seed=1)
    for param in (p for n, p in peft_model.named_parameters() if "lora_B" in n):
        torch.nn.init.normal_(param)  # B = 0 would make every gradient but B's zero
    grads = []
    for checkpointing in (False, True):
        classifier = Classifier(FrozenPrefix(peft_model, 2, gradient_checkpointing=checkpointing), label_token_ids(tokenizer, LABELS))
        peft_model.zero_grad()
        classifier.logits(classifier.runner.cache(data), torch.arange(len(EXAMPLES))).sum().backward()
        grads.append({n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6)


def test_optimizer_steps_touch_only_the_adapter(tiny):
    model, tokenizer = tiny
    frozen_before = {name: p.clone() for name, p in model.named_parameters()}
    peft_model = build_lora_model(model, uniform_spec(4, 2.0, ["q_proj", "v_proj"], [2, 3]))
    classifier = Classifier(FrozenPrefix(peft_model, 2), label_token_ids(tokenizer, LABELS))
    cache = classifier.runner.cache(encode(tokenizer, EXAMPLES, WORDNET_TASK))
    before = classifier.evaluate(cache).loss
    result = train_local(classifier, cache, BatchSampler(len(cache), 0), steps=30, batch_size=12, learning_rate=1e-2)
    assert classifier.evaluate(cache).loss < before
    assert result.steps == 30 and result.peak_memory_bytes > 0
    for name, param in peft_model.get_base_model().named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, frozen_before[name.replace("base_layer.", "")])


def test_training_progress_is_logged_at_first_and_last_step_and_on_a_clock(tiny, caplog):
    model, tokenizer = tiny
    peft_model = build_lora_model(model, uniform_spec(4, 2.0, ["q_proj", "v_proj"], [2, 3]))
    classifier = Classifier(FrozenPrefix(peft_model, 2), label_token_ids(tokenizer, LABELS))
    cache = classifier.runner.cache(encode(tokenizer, EXAMPLES, WORDNET_TASK))
    seen = []
    with caplog.at_level(logging.INFO, logger="fedge.edge_agent.trainer"):
        progress = StepProgress("a1: round 3", 5, every_s=3600)
        train_local(classifier, cache, BatchSampler(len(cache), 0), 5, 4, 1e-2, on_step=lambda step, loss: (seen.append(step), progress(step, loss)))
    assert seen == [1, 2, 3, 4, 5]
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("a1: round 3: step 1/5, loss ") and lines[1].startswith("a1: round 3: step 5/5")


def test_adapter_arrays_are_snapshots_not_views_of_the_live_adapter(tiny):
    model, _ = tiny
    peft_model = build_lora_model(model, uniform_spec(4, 2.0, ["q_proj", "v_proj"], [2, 3]))
    snapshot = adapter_arrays(peft_model)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(1.0)
    assert all(not np.array_equal(snapshot[key], value) for key, value in adapter_arrays(peft_model).items())


def test_the_sampler_deals_every_row_once_per_epoch_and_says_ahead_what_comes():
    sampler = BatchSampler(10, seed=3)
    ahead = sampler.upcoming(5, 4)
    dealt = [sampler.take(4) for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(ahead, dealt))
    # 10 rows in batches of 4: each epoch deals 8 distinct rows and leaves its last 2 for the next shuffle
    first_epoch = torch.cat(dealt[:2]).tolist()
    assert len(set(first_epoch)) == 8 and all(len(set(batch.tolist())) == 4 for batch in dealt)
    assert sorted(sampler.take(50).tolist()) == list(range(10))  # a batch larger than the data is the data


def test_the_prefix_cache_computes_rows_once_and_recomputes_beyond_its_bound(tiny):
    model, tokenizer = tiny
    data = encode(tokenizer, EXAMPLES, WORDNET_TASK)
    classifier = Classifier(FrozenPrefix(model, 2), label_token_ids(tokenizer, LABELS))
    unbounded = classifier.runner.cache(data)
    rows = torch.tensor([0, 1, 2, 0])
    expected = classifier.logits(unbounded, rows)
    classifier.logits(unbounded, rows)
    assert unbounded.computed_rows == 3 and unbounded.cached_rows == 3
    row_bytes = unbounded.bytes // 3
    bounded = classifier.runner.cache(data, max_bytes=row_bytes)  # room for one row
    torch.testing.assert_close(classifier.logits(bounded, rows), expected)
    classifier.logits(bounded, rows)
    assert bounded.cached_rows == 1 and bounded.bytes <= row_bytes and bounded.computed_rows == 3 + 2
    unbounded.weights_changed(None)
    unbounded.weights_changed(2)  # the adapted layers' own weights: the cached states stay valid
    assert unbounded.cached_rows == 3
    unbounded.weights_changed(1)  # a layer the states passed through
    assert unbounded.cached_rows == 0 and unbounded.bytes == 0


def test_training_caches_only_the_rows_it_trains_on(tiny):
    model, tokenizer = tiny
    peft_model = build_lora_model(model, uniform_spec(4, 2.0, ["q_proj", "v_proj"], [2, 3]))
    classifier = Classifier(FrozenPrefix(peft_model, 2), label_token_ids(tokenizer, LABELS))
    cache = classifier.runner.cache(encode(tokenizer, EXAMPLES, WORDNET_TASK))
    sampler = BatchSampler(len(cache), 0)
    first = train_local(classifier, cache, sampler, steps=1, batch_size=4, learning_rate=1e-2)
    assert first.prefix_rows == 4 and cache.cached_rows == 4 and first.prefix_seconds > 0
    cache.fill(torch.cat(sampler.upcoming(2, 4)))  # what the agent does while it waits for the next round
    second = train_local(classifier, cache, sampler, steps=2, batch_size=4, learning_rate=1e-2)
    assert second.prefix_rows == 0 and cache.cached_rows == 12


MULTI_TOKEN_TASK = TaskSpec("classify", ("food plant", "food animal", "time", "place person body"), WORDNET_TASK.prompt, max_tokens=24)


def test_labels_of_several_tokens_are_scored_by_their_full_log_likelihood(tiny):
    model, tokenizer = tiny
    classifier = classifier_for(FrozenPrefix(model, 2), tokenizer, MULTI_TOKEN_TASK)
    assert isinstance(classifier, LikelihoodClassifier)
    examples = [Example("food animal plant time " * 6, i % 4) for i in range(6)]  # cut so the longest label still fits
    data = classifier.encode(examples)
    assert len(data) == 6 and data.input_ids.shape[0] == 24 and int(data.lengths.max()) <= MULTI_TOKEN_TASK.max_tokens
    cache = classifier.runner.cache(data)
    with torch.no_grad():
        scores = classifier.logits(cache, torch.tensor([4, 1]))
        for position, row in enumerate((4, 1)):
            for choice, label in enumerate(MULTI_TOKEN_TASK.labels):
                sequence = data.input_ids[row * 4 + choice, : data.lengths[row * 4 + choice]]
                label_ids = tokenizer.encode(" " + label, add_special_tokens=False)
                log_probs = model(sequence.unsqueeze(0)).logits[0].log_softmax(-1)
                expected = sum(log_probs[len(sequence) - len(label_ids) - 1 + i, token] for i, token in enumerate(label_ids))
                torch.testing.assert_close(scores[position, choice], expected, atol=1e-4, rtol=1e-4)
    assert cache.missing([4, 1, 0]) == [0] and cache.cached_rows == 8  # a row is cached when all its sequences are


def test_a_likelihood_classifier_trains_and_deploys_with_the_same_scores(tiny):  # plumbing: random weights, training loss only
    model, tokenizer = tiny
    peft_model = build_lora_model(model, uniform_spec(4, 2.0, ["q_proj", "v_proj"], [2, 3]), seed=0)
    classifier = classifier_for(FrozenPrefix(peft_model, 2), tokenizer, MULTI_TOKEN_TASK)
    examples = [Example(text, i % 4) for i, text in enumerate(["food plant", "animal food", "time time", "place body"] * 3)]
    cache = classifier.runner.cache(classifier.encode(examples))
    before = classifier.evaluate(cache)
    train_local(classifier, cache, BatchSampler(len(cache), 0), steps=30, batch_size=6, learning_rate=1e-2)
    after = classifier.evaluate(cache)
    assert after.loss < before.loss and len(after.per_class_f1) == 4
    rows = [Row(example.text, MULTI_TOKEN_TASK.labels[example.label], line) for line, example in enumerate(examples, 1)]
    deployed = evaluate_model(TorchCausalLM(peft_model), tokenizer, MULTI_TOKEN_TASK, rows, "test")
    assert deployed.accuracy == after.accuracy and abs(deployed.loss - after.loss) < 1e-4
