"""Every supported decoder family on a tiny random-initialised config (plumbing only, nothing learns here): the
cost model's shape, the frozen-prefix split, LoRA on the family's default targets, and a plan."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GemmaConfig, GPT2Config, GPTNeoXConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

from fedge.coordinator.plans import FleetMember, PlannerOptions

from fedge.coordinator.planner import plan_fleet
from fedge.edge_agent.trainer import BatchSampler, train_local
from fedge.adapters import apply_view, attach, upload
from fedge.lora import adapter_arrays, parse_adapter_key
from fedge.strategies import recipe_for
from fedge.task.classifier import Classifier, EncodedExamples
from fedge.task.prefix import FrozenPrefix
from fedge.wire import LoraSpec
from fedge.profiles import load_catalogue_profile
from fedge.profiles.architecture import UnsupportedModel, family_of
from fedge.profiles.model_shape import shape_from_config

COMMON = {"vocab_size": 64, "pad_token_id": 0}
DECODER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4}
CONFIGS = {
    "llama": LlamaConfig(**COMMON, **DECODER, num_key_value_heads=2),
    "qwen2": Qwen2Config(**COMMON, **DECODER, num_key_value_heads=2, tie_word_embeddings=False),
    "mistral": MistralConfig(**COMMON, **DECODER, num_key_value_heads=2, sliding_window=None),
    "phi3": Phi3Config(**COMMON, **DECODER, num_key_value_heads=2, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0),
    "gemma": GemmaConfig(**COMMON, **DECODER, num_key_value_heads=2, head_dim=8),
    "gpt2": GPT2Config(**COMMON, n_embd=32, n_layer=4, n_head=4, n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "gpt_neox": GPTNeoXConfig(**COMMON, **DECODER, hidden_dropout=0.0, attention_dropout=0.0),
}
LABELS = [5, 9, 13, 17]


@pytest.fixture(params=sorted(CONFIGS))
def family_model(request):
    torch.manual_seed(0)
    config = CONFIGS[request.param]
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    return request.param, config, model


def _batch(seed: int = 0) -> EncodedExamples:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (6, 10), generator=generator)
    lengths = torch.tensor([10, 7, 4, 10, 2, 9])
    for row, length in enumerate(lengths):
        ids[row, length:] = 0  # right padding
    return EncodedExamples(ids, lengths, torch.tensor([0, 1, 2, 3, 0, 1]))


def test_the_cost_model_counts_every_parameter(family_model):
    name, config, model = family_model
    shape = shape_from_config(config, name)
    assert shape.family == name and shape.total_params == model.num_parameters()
    layer = next(iter(module for path, module in model.named_modules() if path.endswith((".layers.0", ".h.0"))))
    for module in shape.linear_modules:
        weight = layer.get_submodule(module if "." in module else next(p for p, _ in layer.named_modules() if p.endswith(module))).weight
        out_features, in_features = shape.module_dims(module)
        assert weight.numel() == out_features * in_features


def test_the_frozen_prefix_split_is_exact(family_model):
    _, _, model = family_model
    batch = _batch()
    with torch.no_grad():
        full = model(batch.input_ids).logits[torch.arange(6), batch.lengths - 1][:, LABELS]
        classifier = Classifier(FrozenPrefix(model, start_layer=2), LABELS)
        split = classifier.logits(classifier.runner.cache(batch), torch.arange(6))
    torch.testing.assert_close(split, full, rtol=1e-4, atol=1e-5)


def test_lora_on_the_family_default_targets_trains_and_travels(family_model):
    name, config, model = family_model
    shape = shape_from_config(config, name)
    spec = LoraSpec(shape.default_targets, (2, 3), (2, 4), 2.0)
    peft_model = attach(model, spec, recipe_for("hetlora"), run_seed=0, seed=0)
    before = adapter_arrays(peft_model)
    assert before and {parse_adapter_key(key)[0] for key in before} == {2, 3}
    classifier = Classifier(FrozenPrefix(peft_model, start_layer=2), LABELS)
    batch = _batch()
    result = train_local(classifier, classifier.runner.cache(batch), BatchSampler(6, 0), steps=3, batch_size=4, learning_rate=1e-2)
    assert result.steps == 3
    sent = upload(peft_model, spec, recipe_for("hetlora"))
    assert set(sent) == set(before) and any((sent[key] != before[key].astype(sent[key].dtype)).any() for key in sent)
    apply_view(peft_model, {key: value * 0 for key, value in sent.items()}, set())  # a received state loads back
    assert all(not value.any() for value in adapter_arrays(peft_model).values())


def test_every_family_is_planned_with_its_own_targets():
    for name, config in CONFIGS.items():
        shape = shape_from_config(config, name)
        plan = plan_fleet([FleetMember("cpu", load_catalogue_profile("cpu-8gb"), 100)], shape, PlannerOptions(max_depth=2, ranks=(4,)))
        assert plan.devices[0].feasible and plan.options.target_modules == shape.default_targets


def test_unknown_families_and_targets_are_refused_by_name():
    with pytest.raises(UnsupportedModel, match="gpt2, gpt_neox"):
        family_of("mamba")
    shape = shape_from_config(CONFIGS["gpt2"], "gpt2")
    with pytest.raises(ValueError, match="has no q_proj"):
        PlannerOptions(target_modules=("q_proj",)).for_model(shape)
