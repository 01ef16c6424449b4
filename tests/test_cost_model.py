"""The memory, time and bytes models' arithmetic, checked against peft, the codec and hand counts."""

import numpy as np
import pytest

from fedge.lora import build_lora_model
from fedge.wire import AdapterUpdate, LoraSpec, encode_message
from fedge.profiles.calibration import Calibration, fit_memory, fit_time, load_calibration
from fedge.profiles.memory import TrainingSetup, activation_elements, base_weight_bytes, lora_params, predict_memory, wide_lora_activation_elements
from fedge.profiles.model_shape import UnsupportedModel, _bundled, bundled_models, load_model_shape, shape_from_config
from fedge.profiles.timing import predict_round_bytes, predict_step_seconds, step_flops
from fedge.quantization.backbone import load_backbone, locate_backbone

CAL = Calibration("test", True, overhead_bytes=100 << 20, activation_factor=2.0, checkpoint_factor=3.0, efficiencies={"fp32": 0.5}, per_layer_seconds=0.01)


def _setup(depth=4, ranks=None, batch=8, seq=32, checkpointing=False, targets=("q_proj", "v_proj"), quantization="fp32", layers_total=30):
    layers = tuple(range(layers_total - depth, layers_total))
    return TrainingSetup(quantization, layers, ranks or (8,) * depth, targets, batch, seq, "adamw", checkpointing, 64)


def test_smollm2_shape_has_its_published_parameter_count():
    shape = load_model_shape("smollm2-135m-instruct")
    assert shape.total_params == 134_515_008
    assert shape.module_dims("k_proj") == (192, 576) and shape.module_dims("down_proj") == (576, 1536)


@pytest.mark.parametrize(
    ("name", "published"),
    [("gpt2", 124_439_808), ("pythia-410m", 405_334_016), ("phi-3-mini-4k", 3_821_079_552), ("gemma-2b", 2_506_172_416), ("qwen2.5-0.5b", 494_032_768)],
)
def test_every_family_has_its_published_parameter_count(name, published):
    assert load_model_shape(name).total_params == published


def test_every_bundled_architecture_reads_as_autoconfig_reads_it():
    """Bundled shapes are read from models.yaml without transformers; AutoConfig must agree on every field."""
    from transformers import AutoConfig

    for name in bundled_models():
        fields = dict(_bundled()[name])
        assert load_model_shape(name) == shape_from_config(AutoConfig.for_model(fields.pop("model_type"), **fields), name), name
    sizes = {name: load_model_shape(name).total_params for name in bundled_models()}
    assert 6.5e9 < sizes["llama-2-7b"] < 6.9e9 and 1.1e9 < sizes["llama-3.2-1b"] < 1.3e9


def test_shape_from_a_checkpoint_directory_and_unknown_models(tiny_backbone):
    shape = load_model_shape(str(tiny_backbone))
    assert (shape.hidden_size, shape.num_layers, shape.num_kv_heads) == (32, 4, 2)
    with pytest.raises(UnsupportedModel, match="llama-2-7b"):
        load_model_shape("gpt-17")


def test_lora_parameter_count_matches_peft_for_a_rank_profile(tiny_backbone):
    model, _ = load_backbone(locate_backbone(str(tiny_backbone)))
    spec = LoraSpec(("q_proj", "k_proj", "down_proj"), (1, 2, 3), (2, 4, 8), 2.0)
    peft_model = build_lora_model(model, spec)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    setup = TrainingSetup("fp32", spec.layers, spec.ranks, spec.target_modules, 4, 16)
    assert lora_params(load_model_shape(str(tiny_backbone)), setup) == trainable


def test_base_weights_shrink_with_the_quantization_and_match_the_qlora_figures():
    shape = load_model_shape("llama-2-7b")
    sizes = {q: base_weight_bytes(shape, q) for q in ("nf4", "int8", "bf16", "fp32")}
    assert sizes["nf4"] < sizes["int8"] < sizes["bf16"] < sizes["fp32"] == 4 * shape.total_params
    assert 3.5 * 2**30 < sizes["nf4"] < 5.0 * 2**30  # QLoRA: ~5 GB for the 4-bit 7B base with its runtime


def test_activations_scale_with_tokens_and_depth_and_checkpointing_cuts_them():
    shape = load_model_shape("smollm2-135m-instruct")
    base = activation_elements(shape, _setup())
    assert activation_elements(shape, _setup(batch=16)) == 2 * base
    assert activation_elements(shape, _setup(depth=8)) == 2 * base
    assert activation_elements(shape, _setup(depth=8, checkpointing=True)) < base / 2


def test_the_breakdown_adds_up_and_uses_the_calibration():
    shape = load_model_shape("smollm2-135m-instruct")
    setup = _setup()
    memory = predict_memory(shape, setup, CAL)
    assert memory.total == memory.base_weights + memory.adapter_state + memory.activations + memory.cached_prefix + memory.overhead
    assert memory.adapter_state == lora_params(shape, setup) * 16  # fp32 weight + grad + two AdamW moments
    assert memory.activations == 2 * activation_elements(shape, setup) * 4
    assert memory.cached_prefix == 64 * 32 * 576 * 4
    checkpointed = _setup(checkpointing=True)
    assert predict_memory(shape, checkpointed, CAL).activations == 3 * activation_elements(shape, checkpointed) * 4
    unified = predict_memory(shape, setup, CAL, unified_host=CAL)
    assert unified.total - memory.total == CAL.overhead_bytes


def test_step_time_is_flops_over_throughput_plus_a_per_layer_cost():
    shape = load_model_shape("smollm2-135m-instruct")
    setup = _setup(depth=2, ranks=(4, 4), batch=1, seq=10)
    linear = 2 * shape.linear_params_per_layer
    attention = 2 * 10 * 576
    lora = 2 * 4 * (576 + 576 + 576 + 192)
    per_layer = (linear + attention + lora) + (linear + 2 * attention + 2 * lora)
    assert step_flops(shape, setup) == pytest.approx(10 * 2 * per_layer)
    assert step_flops(shape, _setup(depth=2, ranks=(4, 4), batch=1, seq=10, checkpointing=True)) == pytest.approx(10 * 2 * (per_layer + linear + attention + lora))
    seconds = predict_step_seconds(shape, setup, gflops=100.0, calibration=CAL)
    assert seconds == pytest.approx(step_flops(shape, setup) / (100e9 * 0.5) + 2 * 0.01)


def test_fedit_bytes_match_the_real_encoded_update():
    shape = load_model_shape("smollm2-135m-instruct")
    setup = _setup(depth=3, ranks=(4, 8, 16))
    tensors = {}
    for layer, rank in zip(setup.layers, setup.ranks):
        for module in setup.target_modules:
            out, inp = shape.module_dims(module)
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            tensors[f"{prefix}.lora_A.weight"] = np.zeros((rank, inp), np.float32)
            tensors[f"{prefix}.lora_B.weight"] = np.zeros((out, rank), np.float32)
    real = len(encode_message(AdapterUpdate("run-1", 3, "agent-1", 120, {"loss": 1.0, "steps": 10.0, "seconds_per_step": 0.3, "peak_memory_bytes": 1e9}, tensors)))
    predicted_up, predicted_down = predict_round_bytes("fedit", shape, setup)
    assert predicted_up == predicted_down
    assert abs(predicted_up / real - 1) < 0.02


def test_wire_formats_follow_the_strategies():
    shape = load_model_shape("smollm2-135m-instruct")
    setup = _setup(depth=2, ranks=(16, 16))
    fedit = predict_round_bytes("fedit", shape, setup)[0]
    assert predict_round_bytes("ffa-lora", shape, setup)[0] < fedit  # B only
    assert predict_round_bytes("ce-lora", shape, setup)[0] < fedit / 10  # r×r cores only
    assert predict_round_bytes("flora", shape, setup, fleet_rank_sum=64)[1] > 3 * fedit  # stacked downlink
    full_up, full_down = predict_round_bytes("full", shape, setup, fleet_rank_sum=64)
    assert 1.9 * fedit < full_up < 2.1 * fedit and full_down > 7 * fedit  # the change at 2r up, the fleet's average (2·64) down
    with pytest.raises(ValueError, match="unknown strategy"):
        predict_round_bytes("fedmagic", shape, setup)


def test_least_squares_fits_recover_known_constants():
    rng = np.random.default_rng(0)
    fixed, activations = rng.uniform(5e8, 6e8, 8), rng.uniform(1e7, 4e8, 8)
    checkpointed = np.array([False, True] * 4)
    wide = np.where(checkpointed, 0.0, activations * rng.uniform(0, 0.4, 8))
    measured = fixed + 4.5e8 + np.where(checkpointed, 2.5 * activations, 2.0 * (activations - wide) + 3.0 * wide)
    overhead, factor, wide_factor, checkpoint_factor = fit_memory(fixed, activations, wide, checkpointed, measured)
    assert overhead == pytest.approx(4.5e8, rel=1e-6) and factor == pytest.approx(2.0) and wide_factor == pytest.approx(3.0) and checkpoint_factor == pytest.approx(2.5)
    ideal, depths = rng.uniform(0.1, 2.0, 8), rng.integers(1, 30, 8)
    kinds = ["fp32"] * 6 + ["bf16"] * 2
    seconds = np.where(np.array(kinds) == "fp32", ideal / 0.7, ideal / 0.05) + 0.01 * depths
    efficiencies, per_layer = fit_time(ideal, kinds, depths, seconds)
    assert efficiencies == pytest.approx({"fp32": 0.7, "bf16": 0.05}) and per_layer == pytest.approx(0.01)


def test_calibration_files_are_in_the_repo_and_say_whether_they_were_measured():
    cpu, cuda = load_calibration("cpu"), load_calibration("cuda")
    assert cpu.measured and len(cpu.samples) >= 8 and 0 < cpu.overhead_bytes < 2**31
    assert cuda.measured and "cuda_check.sh" in cuda.note  # the first GPU run (an H200), both bundled models
    assert {sample["model"] for sample in cuda.samples + cuda.bitsandbytes_samples} == {"smollm2-135m-instruct", "qwen2.5-0.5b"}
    assert len(cuda.samples) == 6 and len(cuda.bitsandbytes_samples) == 4 and 0 < cuda.overhead_bytes < 2**31


def test_lora_beyond_the_attention_inputs_has_its_own_calibrated_factor():
    from dataclasses import replace

    shape = load_model_shape("smollm2-135m-instruct")
    attention, wide = _setup(), _setup(targets=("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
    assert wide_lora_activation_elements(shape, attention) == 0 < wide_lora_activation_elements(shape, wide) < activation_elements(shape, wide)
    assert wide_lora_activation_elements(shape, replace(wide, gradient_checkpointing=True)) == 0
    heavier = replace(CAL, wide_lora_factor=4.0)
    assert predict_memory(shape, attention, heavier).activations == predict_memory(shape, attention, CAL).activations
    extra = predict_memory(shape, wide, heavier).activations - predict_memory(shape, wide, CAL).activations
    assert extra == (4.0 - 2.0) * wide_lora_activation_elements(shape, wide) * 4


def test_labels_of_several_tokens_cost_one_sequence_per_label_and_their_output_layer():
    from dataclasses import replace

    from fedge.profiles.memory import output_layer_bytes

    shape = load_model_shape("smollm2-135m-instruct")
    words = _setup()
    choices = replace(words, sequences_per_example=4, answer_share=2 / 32)
    assert activation_elements(shape, choices) == 4 * activation_elements(shape, words)
    assert output_layer_bytes(shape, words) == 0 and output_layer_bytes(shape, choices) > 0
    assert step_flops(shape, choices) > 4 * step_flops(shape, words)  # four sequences, plus the labels' vocabulary logits


def test_full_weight_training_is_costed_for_its_gradients_projector_and_projected_moments():
    from fedge.coordinator.costing import DeviceCosting
    from fedge.coordinator.plans import PlannerOptions
    from fedge.profiles import load_catalogue_profile
    from fedge.profiles.memory import galore_state_bytes

    shape = load_model_shape("smollm2-135m-instruct")
    setup = TrainingSetup("fp32", (28, 29), (8, 8), ("q_proj", "v_proj"), 4, 48, "galore")
    q, v = shape.module_dims("q_proj"), shape.module_dims("v_proj")
    expected = 2 * 4 * sum(2 * a * b + min(a, b) * 8 + 2 * 8 * max(a, b) for a, b in (q, v))  # the round's starting copy of each matrix too
    assert galore_state_bytes(shape, setup) == expected and galore_state_bytes(shape, setup, host_memory=False) == expected - 2 * 4 * sum(a * b for a, b in (q, v))
    calibration = load_calibration("cpu")
    full, lora = predict_memory(shape, setup, calibration), predict_memory(shape, TrainingSetup("fp32", (28, 29), (8, 8), ("q_proj", "v_proj"), 4, 48), calibration)
    assert full.adapter_state == expected and full.adapter_state > 5 * lora.adapter_state  # d·k gradients, not r·(d+k) factors
    options = PlannerOptions(strategy="full", max_depth=2, ranks=(8,)).for_model(shape)
    costing = DeviceCosting(load_catalogue_profile("cpu-16gb"), 100, None, shape, options, {"cpu": calibration})
    assert costing.largest_setup(2).optimizer == "galore"
