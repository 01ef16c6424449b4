"""ONNX export of a run's merged global model: the graph gives the merged torch model's logits and task results."""

import json

import torch

from fedge.deploy.evaluate import evaluate_model
from fedge.deploy.onnx import INT8_FILE, MODEL_FILE, TASK_FILE, OnnxCausalLM, TorchCausalLM, export_run, merged_model
from fedge.lora import build_lora_model, uniform_spec
from fedge.task.data import Row
from fedge.task.wordnet import LABELS, WORDNET_TASK
from quantization.backbone import load_backbone, locate_backbone


def _run_dir(tmp_path, backbone):
    run = tmp_path / "run"
    model, _ = load_backbone(locate_backbone(str(backbone)))
    adapted = build_lora_model(model, uniform_spec(4, 1.0, ["q_proj", "v_proj"], [2, 3]), seed=0)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a trained adapter, so merging changes the logits
    adapted.save_pretrained(run / "adapter")
    task = {"kind": "classify", "labels": list(LABELS), "prompt": WORDNET_TASK.prompt, "max_tokens": 48}
    (run / "config.json").write_text(json.dumps({"backbone": str(backbone), "strategy": "hetlora", "task": task}))
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
