"""ONNX export of a run's merged global model: the graph gives the merged torch model's logits and task results."""

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.numpy import save_file

from fedge.adapters import PEFT_PREFIX, attach, lora_layers, save_adapter
from fedge.shell.cli import main
from fedge.deploy.evaluate import evaluate_model
from fedge.deploy.onnx import INT8_FILE, MODEL_FILE, TASK_FILE, OnnxCausalLM, TorchCausalLM, export_run, merged_model
from fedge.lora import build_lora_model, uniform_spec
from fedge.strategies import recipe_for
from fedge.strategies.base import delta_key
from fedge.task.data import Example, Row, write_jsonl
from fedge.wire import LoraSpec
from fedge.task.wordnet import LABELS, WORDNET_TASK
from fedge.quantization.backbone import load_backbone, locate_backbone


INPUT_IDS = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 1, 1]])
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def _run_dir(tmp_path, backbone, strategy="hetlora"):
    run = tmp_path / "run"
    model, _ = load_backbone(locate_backbone(str(backbone)))
    adapted = build_lora_model(model, uniform_spec(4, 1.0, ["q_proj", "v_proj"], [2, 3]), seed=0)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a trained adapter, so merging changes the logits
    adapted.save_pretrained(run / "adapter")
    task = {"kind": "classify", "labels": list(LABELS), "prompt": WORDNET_TASK.prompt, "max_tokens": 48}
    (run / "config.json").write_text(json.dumps({"backbone": str(backbone), "strategy": strategy, "task": task}))
    return run


def test_the_export_matches_the_merged_model_and_quantizes(tmp_path, tiny_backbone):
    run = _run_dir(tmp_path, tiny_backbone)
    files = export_run(run, tmp_path / "out", int8=True)
    assert [file.name for file in files] == [MODEL_FILE, INT8_FILE] and (tmp_path / "out" / TASK_FILE).exists()
    model, tokenizer = merged_model(run)
    plain, _ = load_backbone(locate_backbone(str(tiny_backbone)))
    input_ids = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    merged = TorchCausalLM(model).logits(input_ids, mask)
    assert not torch.allclose(merged, TorchCausalLM(plain).logits(input_ids, mask), atol=1e-3)  # the adapter is in
    onnx = OnnxCausalLM(tmp_path / "out" / MODEL_FILE).logits(input_ids, mask)
    torch.testing.assert_close(onnx[0], merged[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(onnx[1, :3], merged[1, :3], rtol=1e-4, atol=1e-4)  # real tokens of a padded row
    rows = [Row("food animal plant time", label, line) for line, label in enumerate(LABELS, 1)]
    on_torch = evaluate_model(TorchCausalLM(model), tokenizer, WORDNET_TASK, rows, "test")
    on_onnx = evaluate_model(OnnxCausalLM(tmp_path / "out" / MODEL_FILE), tokenizer, WORDNET_TASK, rows, "test")
    assert on_torch.accuracy == on_onnx.accuracy and abs(on_torch.loss - on_onnx.loss) < 1e-4


def test_export_and_evaluate_commands_agree_with_torch(tmp_path, tiny_backbone, capsys):
    run = _run_dir(tmp_path, tiny_backbone)
    held_out = tmp_path / "held_out.jsonl"
    write_jsonl(held_out, [Example(f"food animal plant {word}", label) for word in ("time", "water") for label in range(len(LABELS))], LABELS)
    assert main(["export", str(run), "--onnx", str(tmp_path / "out"), "--int8"]) == 0
    results = {}
    for name, args in {"torch": [str(run)], "onnx": [str(tmp_path / "out")], "int8": [str(tmp_path / "out"), "--int8"]}.items():
        capsys.readouterr()
        assert main(["evaluate", *args, "--data", str(held_out), "--json"]) == 0
        results[name] = json.loads(capsys.readouterr().out)
    assert results["torch"]["examples"] == 16 and results["torch"]["accuracy"] == results["onnx"]["accuracy"]
    assert abs(results["torch"]["loss"] - results["onnx"]["loss"]) < 1e-4 and abs(results["int8"]["loss"] - results["onnx"]["loss"]) < 0.05


def test_a_device_adapter_with_a_tri_factor_core_saves_as_plain_peft_and_exports(tmp_path, tiny_backbone):
    model, _ = load_backbone(locate_backbone(str(tiny_backbone)))
    trained = attach(model, LoraSpec(("q_proj", "v_proj"), (2, 3), (2, 4), 2.0), recipe_for("ce-lora"), run_seed=5, seed=0)
    with torch.no_grad():
        for _, layer in lora_layers(trained):
            layer.lora_B["default"].weight.normal_(0, 0.5)
            layer.lora_B["default"].core.add_(torch.randn_like(layer.lora_B["default"].core))
    expected = TorchCausalLM(trained).logits(INPUT_IDS, MASK)
    save_adapter(trained, tmp_path / "device")
    plain, _ = load_backbone(locate_backbone(str(tiny_backbone)))
    torch.testing.assert_close(TorchCausalLM(PeftModel.from_pretrained(plain, tmp_path / "device")).logits(INPUT_IDS, MASK), expected)
    run = _run_dir(tmp_path, tiny_backbone, strategy="ce-lora")
    with pytest.raises(ValueError, match="no global model"):
        merged_model(run)
    device_model, _ = merged_model(run, adapter=tmp_path / "device")
    torch.testing.assert_close(TorchCausalLM(device_model).logits(INPUT_IDS, MASK), expected, rtol=1e-4, atol=1e-4)


def test_the_global_model_includes_frozen_weight_changes_from_the_last_global_state(tmp_path, tiny_backbone):
    run = _run_dir(tmp_path, tiny_backbone, strategy="fedex-lora")
    without, _ = merged_model(run)
    module = PEFT_PREFIX + "model.layers.2.self_attn.q_proj"
    weight = dict(without.named_parameters())["model.layers.2.self_attn.q_proj.weight"].detach().numpy()
    left, right = np.random.default_rng(0).normal(size=(weight.shape[0], 2)), np.random.default_rng(1).normal(size=(2, weight.shape[1]))
    (run / "globals").mkdir()
    save_file({delta_key(module, 1, "left"): left.astype(np.float32), delta_key(module, 1, "right"): right.astype(np.float32)}, run / "globals" / "round_001.safetensors")
    changed, _ = merged_model(run)
    after = dict(changed.named_parameters())["model.layers.2.self_attn.q_proj.weight"].detach().numpy()
    np.testing.assert_allclose(after - weight, left @ right, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="outside a device's adapter"):
        merged_model(run, adapter=run / "adapter")


def test_the_docs_deployment_commands_run_as_written(tmp_path, tiny_backbone, monkeypatch, capsys):
    import re
    import shlex
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "export.md").read_text()
    block = page.split("```bash", 1)[1].split("```", 1)[0]
    commands = [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines() if line.startswith("fedge ")]
    assert [command.split()[1] for command in commands] == ["export", "evaluate", "evaluate"]
    run = _run_dir(tmp_path / "runs" / "demo", tiny_backbone)
    run.rename(tmp_path / "runs" / "demo" / "coordinator")
    write_jsonl(tmp_path / "runs/demo/data/test.jsonl", [Example("food animal plant time", label) for label in range(len(LABELS))], LABELS)
    monkeypatch.chdir(tmp_path)
    for command in commands:
        capsys.readouterr()
        assert main(shlex.split(command)[1:]) == 0, command
        assert ("model.int8.onnx" if command.split()[1] == "export" else "accuracy") in capsys.readouterr().out
    assert (tmp_path / "runs/demo/onnx/model.int8.onnx").exists()
