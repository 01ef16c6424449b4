"""What a device trains under each recipe, on the tiny random Llama: tri-factor cores, shared frozen A, GaLore,
and frozen-weight changes on plain and 4-bit bases."""

import time

import numpy as np
import pytest
import torch
from galore_torch import GaLoreAdamW

from fedge.edge_agent.trainer import BatchSampler, DeadlinePassed, Slowed, check_galore_active, make_optimizer, train_local
from fedge.adapters import apply_view, attach, galore_groups, lora_layers, restart_lora, restore, round_start, upload
from fedge.strategies import recipe_for
from fedge.strategies.base import CHANGE_LEFT_SUFFIX, CHANGE_RIGHT_SUFFIX, delta_key, layer_of, shared_lora_a
from fedge.task.classifier import Classifier, encode, label_token_ids
from fedge.task.prefix import FrozenPrefix
from fedge.task.data import Example
from fedge.task.wordnet import LABELS, WORDNET_TASK
from fedge.wire import LoraSpec
from fedge.quantization.backbone import load_backbone, locate_backbone, needs_loss_scaling

SPEC = LoraSpec(("q_proj", "v_proj"), (2, 3), (2, 4), 2.0)
EXAMPLES = [Example("food animal plant time", i % 8) for i in range(12)]


def _load(backbone, quantization="fp32"):
    return load_backbone(locate_backbone(str(backbone)), quantization)


def _train(model, tokenizer, spec, optimizer="adamw", groups=None, steps=3, loss_scaling=False, on_step=None, stop_at=None, proximal_mu=0.0):
    classifier = Classifier(FrozenPrefix(model, min(spec.layers)), label_token_ids(tokenizer, LABELS))
    cache = classifier.runner.cache(encode(tokenizer, EXAMPLES, WORDNET_TASK))
    return train_local(classifier, cache, BatchSampler(len(cache), 0), steps, 4, 1e-2, optimizer, groups, loss_scaling, on_step, stop_at, proximal_mu)


def test_fedprox_holds_the_trained_weights_near_where_the_round_started(tiny_backbone):
    """The proximal term μ/2·‖w − w₀‖² pulls back what the task's gradient pushes away: the same steps from the
    same start drift far less under μ = 100, and the loss reported is still the task's own."""
    drift, losses = {}, {}
    for mu in (0.0, 100.0):
        model, tokenizer = _load(tiny_backbone)
        peft_model = attach(model, SPEC, recipe_for("hetlora"), run_seed=0, seed=0)
        trained = [param for param in peft_model.parameters() if param.requires_grad]
        start = [param.detach().clone() for param in trained]
        losses[mu] = _train(peft_model, tokenizer, SPEC, steps=10, proximal_mu=mu).loss
        drift[mu] = sum(float(torch.sum(torch.square(param.detach() - first))) for param, first in zip(trained, start))
    assert 0 < drift[100.0] < 0.5 * drift[0.0]
    assert abs(losses[100.0] - losses[0.0]) < 100 / 2 * drift[100.0] / 4  # the task's loss, not the penalised objective


def test_training_stops_at_the_deadline_with_the_steps_it_took_or_refuses_if_none_fit(tiny_backbone):
    model, tokenizer = _load(tiny_backbone)
    peft_model = attach(model, SPEC, recipe_for("hetlora"), run_seed=0, seed=0)

    def slow_step(step, loss):  # each step takes at least 0.2 s
        time.sleep(0.2)

    result = _train(peft_model, tokenizer, SPEC, steps=50, on_step=slow_step, stop_at=time.time() + 1.0)
    assert 2 <= result.steps <= 5 and result.seconds_per_step >= 0.2
    with pytest.raises(DeadlinePassed):
        _train(peft_model, tokenizer, SPEC, steps=5, stop_at=time.time() - 1)


def test_tri_factor_adapter_computes_s_b_c_a_and_sends_only_cores(tiny_backbone):
    model, _ = _load(tiny_backbone)
    peft_model = attach(model, SPEC, recipe_for("ce-lora"), run_seed=5, seed=0)
    name, layer = lora_layers(peft_model)[-1]
    rank = layer.lora_A["default"].weight.shape[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        layer.lora_B["default"].core.copy_(torch.randn(rank, rank))
    x = torch.randn(3, layer.get_base_layer().in_features)
    a, b, c = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.lora_B["default"].core
    expected = layer.get_base_layer()(x) + 2.0 * x @ (b @ c @ a).T
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert np.array_equal(a.detach().numpy(), shared_lora_a(name, rank, a.shape[1], 5))  # CE-LoRA's A: the shared seed
    sent = upload(peft_model, SPEC, recipe_for("ce-lora"))
    assert sent and all(key.endswith(".lora_C.weight") and value.shape[0] == value.shape[1] for key, value in sent.items())


def test_ffa_lora_keeps_the_shared_a_frozen_and_trains_b(tiny_backbone):
    model, tokenizer = _load(tiny_backbone)
    peft_model = attach(model, SPEC, recipe_for("ffa-lora"), run_seed=3, seed=0)
    before = {name: (layer.lora_A["default"].weight.clone(), layer.lora_B["default"].weight.clone()) for name, layer in lora_layers(peft_model)}
    _train(peft_model, tokenizer, SPEC)
    for name, layer in lora_layers(peft_model):
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        assert torch.equal(a, before[name][0]) and not a.requires_grad
        assert np.array_equal(a.numpy(), shared_lora_a(name, a.shape[0], a.shape[1], 3))
        assert not torch.equal(b, before[name][1])
    assert all(key.endswith(".lora_B.weight") for key in upload(peft_model, SPEC, recipe_for("ffa-lora")))


def test_galore_really_projects_and_plain_groups_are_refused(tiny_backbone):
    model, tokenizer = _load(tiny_backbone)
    model = attach(model, SPEC, recipe_for("full"), run_seed=0, seed=0)
    groups = galore_groups(model, SPEC)
    assert sorted(group["rank"] for group in groups) == [2, 4]
    trained = [p for group in groups for p in group["params"]]
    before = [p.detach().clone() for p in trained]
    start = round_start(model, SPEC, recipe_for("full"))
    result = _train(model, tokenizer, SPEC, "galore", groups)
    assert result.steps == 3 and all(not torch.equal(p, q) for p, q in zip(trained, before))
    sent = upload(model, SPEC, recipe_for("full"), start)
    assert {key.rsplit(".", 1)[-1] for key in sent} == {"left", "right"} and len(sent) == 2 * len(start)
    weights = {name: module.weight for name, module in model.named_modules() if hasattr(module, "weight")}
    for name, old in start.items():
        left, right = sent[name + CHANGE_LEFT_SUFFIX], sent[name + CHANGE_RIGHT_SUFFIX]
        assert left.shape[1] == 2 * SPEC.layer_ranks[layer_of(name)]  # two projector spans
        change = weights[name[len("base_model.model."):]].detach() - old
        assert torch.linalg.norm(torch.from_numpy(left.astype(np.float32) @ right.astype(np.float32)) - change) <= 2e-3 * torch.linalg.norm(change)  # float16 factors
    restore(model, SPEC, start)
    assert all(torch.equal(p, q) for p, q in zip(trained, before))
    with pytest.raises(ValueError, match="projection rank"):
        make_optimizer("galore", trained, 1e-3, [{"params": trained}])
    plain = GaLoreAdamW([{"params": trained}], lr=1e-3, no_deprecation_warning=True)  # the reference code's silent AdamW
    for p in trained:
        p.grad = torch.ones_like(p)
    plain.step()
    with pytest.raises(RuntimeError, match="not active"):
        check_galore_active(plain)


def test_full_weights_keep_their_galore_state_across_rounds_and_take_their_own_scale(tiny_backbone):
    """The kept optimizer continues its step count and moments through a new round's weights (copied in place, as
    a received state is), where a fresh one starts from zero; the scale travels in the groups."""
    from fedge.edge_agent.trainer import reused_optimizer

    model, tokenizer = _load(tiny_backbone)
    model = attach(model, SPEC, recipe_for("full"), run_seed=0, seed=0)
    groups = galore_groups(model, SPEC, scale=1.5)
    assert {group["scale"] for group in groups} == {1.5}
    kept = reused_optimizer(None, "galore", model, 1e-2, groups, 1.5)
    classifier = Classifier(FrozenPrefix(model, min(SPEC.layers)), label_token_ids(tokenizer, LABELS))
    cache = classifier.runner.cache(encode(tokenizer, EXAMPLES, WORDNET_TASK))
    train_local(classifier, cache, BatchSampler(len(cache), 0), 3, 4, 1e-2, "galore", groups, step_rule=kept)
    weight = groups[0]["params"][0]
    steps_after_first = kept.state[weight]["step"]
    with torch.no_grad():
        weight.copy_(weight * 0.5)  # the averaged global state arrives, copied in place
    again = reused_optimizer(kept, "galore", model, 5e-3, groups, 0.5)
    assert again is kept and {group["lr"] for group in again.param_groups} == {5e-3} and {group["scale"] for group in again.param_groups} == {0.5}
    train_local(classifier, cache, BatchSampler(len(cache), 1), 3, 4, 5e-3, "galore", groups, step_rule=again)
    assert kept.state[weight]["step"] == steps_after_first + 3 and "projector" in kept.state[weight]


def test_full_weights_have_their_own_learning_rate_and_scale():
    from fedge.strategies import StrategyError, make_strategy

    full = make_strategy("full", learning_rate=5e-4, galore_scale=1.0)
    assert full.device_learning_rate(2e-3) == 5e-4 and full.galore_scale == 1.0 and full.recipe.keeps_optimizer
    assert make_strategy("full").device_learning_rate(2e-3) == 0.05 and make_strategy("full", learning_rate=0).device_learning_rate(2e-3) == 2e-3 and make_strategy("hetlora").device_learning_rate(2e-3) == 2e-3
    with pytest.raises(StrategyError, match="galore_scale"):
        make_strategy("full", galore_scale=0)
    with pytest.raises(StrategyError, match="learning_rate"):
        make_strategy("full", learning_rate=-1)


@pytest.mark.parametrize("quantization", ["fp32", "nf4"])
def test_frozen_weight_changes_apply_once_on_plain_and_4bit_bases(tiny_backbone, quantization):
    model, _ = _load(tiny_backbone, quantization)
    peft_model = attach(model, SPEC, recipe_for("flora"), run_seed=0, seed=0)
    name = "base_model.model.model.layers.1.self_attn.q_proj"  # below the adapter: a plain (or 4-bit) linear
    module = peft_model.get_submodule(name)
    rng = np.random.default_rng(0)
    left, right = rng.normal(size=(module.out_features, 3)).astype(np.float32), rng.normal(size=(3, module.in_features)).astype(np.float32)
    x = torch.randn(2, module.in_features)
    before = module(x.to(torch.bfloat16) if quantization == "nf4" else x).float()
    applied: set[int] = set()
    view = {delta_key(name, 1, "left"): left, delta_key(name, 1, "right"): right}
    assert apply_view(peft_model, view, applied) == 1 and applied == {1}
    assert apply_view(peft_model, view, applied) is None  # the same round again changes nothing
    after = module(x.to(torch.bfloat16) if quantization == "nf4" else x).float()
    expected = before + x @ torch.from_numpy(left @ right).T
    tolerance = 1e-4 if quantization == "fp32" else 0.1
    assert torch.allclose(after, expected, atol=tolerance * float(expected.abs().max()))
    if quantization == "nf4":
        assert module.fedge_base_change.shape == (module.out_features, module.in_features)  # kept beside the 4-bit weight


def test_flora_restart_gives_fresh_factors(tiny_backbone):
    model, _ = _load(tiny_backbone)
    peft_model = attach(model, SPEC, recipe_for("flora"), run_seed=0, seed=0)
    for _, layer in lora_layers(peft_model):
        torch.nn.init.ones_(layer.lora_B["default"].weight)
    old_a = [layer.lora_A["default"].weight.clone() for _, layer in lora_layers(peft_model)]
    restart_lora(peft_model, seed=9)
    for (_, layer), a in zip(lora_layers(peft_model), old_a):
        assert not layer.lora_B["default"].weight.any() and not torch.equal(layer.lora_A["default"].weight, a)


def test_full_weight_training_refuses_a_quantized_base(tiny_backbone):
    model, _ = _load(tiny_backbone, "nf4")
    with pytest.raises(ValueError, match="needs a 16/32-bit base"):
        attach(model, SPEC, recipe_for("full"), run_seed=0, seed=0)


def test_fp16_base_trains_with_loss_scaling_and_fp32_adapter(tiny_backbone):
    model, tokenizer = _load(tiny_backbone, "fp16")
    peft_model = attach(model, SPEC, recipe_for("fedit"), run_seed=0, seed=0)
    trainable = {name: p.detach().clone() for name, p in peft_model.named_parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 for p in trainable.values())  # peft keeps LoRA factors in fp32
    result = _train(peft_model, tokenizer, SPEC, steps=6, loss_scaling=True)
    assert result.loss_scale > 1 and result.skipped_steps < 6 and np.isfinite(result.loss)
    after = dict(peft_model.named_parameters())
    assert any(not torch.equal(after[name], before) for name, before in trainable.items())


def test_loss_scaling_refuses_16_bit_trainable_weights(tiny_backbone):
    model, tokenizer = _load(tiny_backbone, "fp16")
    plain = attach(model, SPEC, recipe_for("full"), run_seed=0, seed=0)
    with pytest.raises(ValueError, match="fp32 trainable parameters"):
        _train(plain, tokenizer, SPEC, steps=1, loss_scaling=True)


@pytest.mark.parametrize(
    ("quantization", "device", "capability", "scaled"),
    [("fp16", "cuda", None, True), ("bf16", "cuda", None, False), ("fp32", "cuda", None, False), ("int8", "cuda", None, True),
     ("nf4", "cuda:0", (7, 5), True), ("nf4", "cuda:0", (8, 6), False), ("nf4", "cpu", None, False), ("int8", "cpu", None, False)],
)
def test_loss_scaling_wherever_activations_are_fp16(monkeypatch, quantization, device, capability, scaled):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert needs_loss_scaling(quantization, device) is scaled


def test_a_slowed_step_takes_the_factor_times_as_long_and_still_reports():
    seen = []
    slowed = Slowed(lambda step, loss: seen.append(step), factor=3)
    started = time.monotonic()
    for step in (1, 2):
        time.sleep(0.05)  # the step's own work
        slowed(step, 0.0)
    assert seen == [1, 2] and time.monotonic() - started >= 3 * 0.1 * 0.95
