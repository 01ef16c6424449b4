"""Export a run's global model for inference with onnxruntime, and run a task's evaluation on an export.

``export_run`` merges the run's global adapter into its backbone (fp32) and writes one ONNX graph,
``input_ids, attention_mask -> logits``, with the tokenizer and the run's task beside it, optionally with an int8
copy quantized by onnxruntime's dynamic quantization (weights int8, activations quantized on the fly).
``OnnxCausalLM`` runs such an export behind the small interface the task evaluations use.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from fedge.wire import TaskSpec

MODEL_FILE, INT8_FILE, TASK_FILE = "model.onnx", "model.int8.onnx", "fedge_task.json"
# strategies whose global model lives partly outside the adapter (merged base changes or replaced weights)
NOT_IN_ADAPTER = ("fedex-lora", "flora", "full", "ce-lora")
log = logging.getLogger(__name__)


class _Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def run_task(run_dir: Path) -> tuple[dict, TaskSpec]:
    """A run directory's saved config and its task."""
    config = json.loads((run_dir / "config.json").read_text())
    task = config["task"]
    return config, TaskSpec(**{**task, "labels": tuple(task.get("labels", ()))})


def merged_model(run_dir: Path):
    """The run's backbone with its global adapter merged in, and the tokenizer."""
    from peft import PeftModel

    from quantization.backbone import load_backbone, locate_backbone

    config, _ = run_task(run_dir)
    if config["strategy"] in NOT_IN_ADAPTER:
        raise ValueError(f"{config['strategy']} keeps part of its model outside the adapter (base changes, replaced weights or per-device cores); export supports the factor-averaging strategies")
    if not (run_dir / "adapter" / "adapter_config.json").exists():
        raise FileNotFoundError(f"{run_dir / 'adapter'}: no adapter; the run has not finished")
    model, tokenizer = load_backbone(locate_backbone(config["backbone"]))
    merged = PeftModel.from_pretrained(model, run_dir / "adapter").merge_and_unload()
    merged.eval()
    return merged, tokenizer


def export_run(run_dir: Path, out: Path, int8: bool = False, opset: int = 17) -> list[Path]:
    """Write the merged model as ONNX (and an int8 copy) with its tokenizer and task; returns the model files."""
    model, tokenizer = merged_model(run_dir)
    _, task = run_task(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    sample = tokenizer(["an example to trace the graph"], return_tensors="pt")
    with torch.no_grad():
        torch.onnx.export(
            _Logits(model), (sample["input_ids"], sample["attention_mask"]), str(out / MODEL_FILE),
            input_names=["input_ids", "attention_mask"], output_names=["logits"], opset_version=opset, dynamo=False,
            dynamic_axes={name: {0: "batch", 1: "tokens"} for name in ("input_ids", "attention_mask", "logits")},
        )
    tokenizer.save_pretrained(out)
    (out / TASK_FILE).write_text(json.dumps(asdict(task), indent=2))
    files = [out / MODEL_FILE]
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(out / MODEL_FILE, out / INT8_FILE, weight_type=QuantType.QInt8)
        files.append(out / INT8_FILE)
    return files


class OnnxCausalLM:
    """An exported model in an onnxruntime session: ``logits(input_ids, attention_mask)`` on right-padded rows."""

    def __init__(self, path: Path, threads: int = 0):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feeds = {"input_ids": input_ids.numpy().astype(np.int64), "attention_mask": attention_mask.numpy().astype(np.int64)}
        return torch.from_numpy(self.session.run(["logits"], feeds)[0])


class TorchCausalLM:
    """The same interface on a torch model (the merged run, before export)."""

    def __init__(self, model):
        self.forward = _Logits(model)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward(input_ids, attention_mask).float()
