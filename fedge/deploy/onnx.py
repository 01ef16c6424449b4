"""Export a run's model for inference with onnxruntime.

``export_run`` rebuilds the run's final global model — its backbone, the global adapter, and the frozen-weight
changes or replaced weights the strategy keeps in the last global state — or one device's personalised model (the
adapter ``fedge agent --save`` wrote), merges it into fp32 weights and writes one ONNX graph,
``input_ids, attention_mask -> logits``, with the tokenizer and the run's task beside it. ``int8`` adds a copy whose
linear weights are int8 (symmetric, one scale per block of 128 inputs) run by onnxruntime's ``MatMulNBits`` with
int8 compute: activations are quantized on the fly, per block, which keeps the task's accuracy where per-tensor
dynamic quantization of a small LLM loses points.
``OnnxCausalLM`` runs such an export behind the small interface the task evaluations use.
"""

from __future__ import annotations

import json
import warnings
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from fedge.deploy.run_files import exportable, run_task, task_spec
from fedge.wire import TaskSpec

MODEL_FILE, INT8_FILE, TASK_FILE = "model.onnx", "model.int8.onnx", "fedge_task.json"
INT8_BLOCK = 128
ONE_FILE_LIMIT = 1 << 31  # protobuf's 2 GiB: larger graphs keep their weights in an external data file
log = logging.getLogger(__name__)


class _Logits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def merged_model(run_dir: Path, adapter: Path | None = None):
    """The run's final global model, or the backbone with one device's ``adapter`` directory, merged; and the tokenizer."""
    from peft import PeftModel

    from fedge.adapters import apply_frozen_changes
    from fedge.strategies import make_strategy
    from fedge.quantization.backbone import load_backbone, locate_backbone
    from safetensors.numpy import load_file

    config, source = exportable(run_dir, adapter)
    strategy = config["strategy"]
    model, tokenizer = load_backbone(locate_backbone(config["backbone"]), "fp32")
    model = PeftModel.from_pretrained(model, source)
    if adapter is None:
        rounds = sorted((run_dir / "globals").glob("round_*.safetensors"))
        parts = make_strategy(strategy, seed=config.get("seed", 0), **config.get("strategy_options", {})).global_parts(load_file(rounds[-1])) if rounds else None
        if parts is not None:
            apply_frozen_changes(model, parts, set())
    merged = model.merge_and_unload()
    merged.eval()
    return merged, tokenizer


def export_run(run_dir: Path, out: Path, int8: bool = False, adapter: Path | None = None, opset: int = 17) -> list[Path]:
    """Write the merged model as ONNX (and an int8 copy) with its tokenizer and task; returns the model files."""
    model, tokenizer = merged_model(run_dir, adapter)
    _, task = run_task(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    sample = tokenizer(["an example to trace the graph"], return_tensors="pt")
    with torch.no_grad(), warnings.catch_warnings():  # the tracer's notes on shapes and indexing say nothing a user can act on
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's own notice: dynamo=False is deliberate (no onnxscript)
        torch.onnx.export(
            _Logits(model), (sample["input_ids"], sample["attention_mask"]), str(out / MODEL_FILE),
            input_names=["input_ids", "attention_mask"], output_names=["logits"], opset_version=opset, dynamo=False,
            dynamic_axes={name: {0: "batch", 1: "tokens"} for name in ("input_ids", "attention_mask", "logits")},
        )
    tokenizer.save_pretrained(out)
    (out / TASK_FILE).write_text(json.dumps(asdict(task), indent=2))
    files = [out / MODEL_FILE]
    if int8:
        files.append(quantize_int8(out / MODEL_FILE, out / INT8_FILE))
    return files


def quantize_int8(source: Path, target: Path) -> Path:
    """An int8 copy of an exported graph: block-quantized linear weights, int8 compute (see the module docstring)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=INT8_BLOCK, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=quantizer.model.model.ByteSize() >= ONE_FILE_LIMIT)
    return target


def export_task(out: Path) -> TaskSpec:
    """The task an export was written with."""
    return task_spec(json.loads((out / TASK_FILE).read_text()))


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
