"""A run's model deployed with onnxruntime: task accuracy and per-example latency of torch, ONNX and ONNX int8.

    python benchmarks/export.py [--run runs/demo/coordinator] [--data runs/demo/data/test.jsonl] [--examples 200]
    python benchmarks/export.py --quick

Exports the run's merged global model (``fedge export --int8``), then evaluates the task on the same held-out
examples with the merged torch model (the baseline), the fp32 ONNX graph and its int8 copy, and times one example
at a time (batch 1, as an edge device answers) on this CPU. Goal: ONNX and int8 within 1 point of torch.
``--quick`` needs no run: SmolLM2-135M with an untrained adapter (the pretrained model) on 24 WordNet examples.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

from fedge.deploy.evaluate import CausalLM, evaluate_model
from fedge.deploy.onnx import OnnxCausalLM, TorchCausalLM, export_run, merged_model, run_task
from fedge.task.data import Record, read_rows, write_jsonl

GOAL_POINTS = 1.0


def pretrained_run(directory: Path) -> tuple[Path, Path]:
    """A run directory holding SmolLM2 with an untrained adapter, and 24 held-out WordNet examples."""
    from fedge.lora import build_lora_model, uniform_spec
    from fedge.task.wordnet import LABELS, WORDNET_TASK, load_splits
    from fedge.quantization.backbone import DEFAULT_BACKBONE, load_backbone, locate_backbone

    model, _ = load_backbone(locate_backbone(DEFAULT_BACKBONE))
    build_lora_model(model, uniform_spec(4, 1.0, ["q_proj", "v_proj"], [28, 29]), seed=0).save_pretrained(directory / "adapter")
    task = {"kind": "classify", "labels": list(LABELS), "prompt": WORDNET_TASK.prompt, "max_tokens": WORDNET_TASK.max_tokens}
    (directory / "config.json").write_text(json.dumps({"backbone": DEFAULT_BACKBONE, "strategy": "hetlora", "task": task}))
    _, test = load_splits(1, 3, seed=0)
    write_jsonl(directory / "test.jsonl", test, LABELS)
    return directory, directory / "test.jsonl"


def single_inputs(tokenizer, task, records: list[Record]) -> list[torch.Tensor]:
    """Each example's input as the task's evaluation encodes it: a classify prompt, or an instruct prompt."""
    from fedge.task.classifier import encode as encode_examples
    from fedge.task.instruction import encode as encode_dialogues
    from fedge.task.kinds import kind_of

    items = kind_of(task.kind).items(records, task, "latency")
    if task.kind == "classify":
        data = encode_examples(tokenizer, items, task)
        return [data.input_ids[row, : data.lengths[row]] for row in range(len(data))]
    return [torch.tensor(prompt) for prompt in encode_dialogues(tokenizer, items, task).prompts]


def latency_ms(engine: CausalLM, inputs: list[torch.Tensor]) -> float:
    """Median milliseconds of one example's forward pass at batch 1."""
    times = []
    for ids in inputs:
        row = ids.unsqueeze(0)
        started = time.perf_counter()
        engine.logits(row, torch.ones_like(row))
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/demo/coordinator", help="a finished run directory")
    parser.add_argument("--data", default="runs/demo/data/test.jsonl", help="held-out JSON lines of the run's task")
    parser.add_argument("--examples", type=int, default=200, help="held-out examples to score")
    parser.add_argument("--latency-examples", type=int, default=50, help="examples timed one at a time")
    parser.add_argument("--quick", action="store_true", help="the pretrained model on 24 examples; no run needed")
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("onnxruntime").setLevel(logging.WARNING)  # the int8 quantizer logs every node
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        run, data = pretrained_run(Path(scratch) / "run") if args.quick else (Path(args.run), Path(args.data))
        records = read_rows(data)[: args.examples]
        _, task = run_task(run)
        out = Path(scratch) / "export"
        started = time.perf_counter()
        fp32, int8 = export_run(run, out, int8=True)
        print(f"export: {time.perf_counter() - started:.1f} s; model.onnx {fp32.stat().st_size / 1e6:.0f} MB, int8 {int8.stat().st_size / 1e6:.0f} MB")
        model, tokenizer = merged_model(run)
        engines = {"torch (merged, fp32)": TorchCausalLM(model), "onnxruntime fp32": OnnxCausalLM(fp32), "onnxruntime int8": OnnxCausalLM(int8)}
        inputs = single_inputs(tokenizer, task, records[: args.latency_examples])
        repeats = len(inputs)
        print(f"{len(records)} held-out examples of {data.name}; latency: median of {repeats} single-example forward passes, {torch.get_num_threads()} threads")
        print(f"{'engine':<22} {task.metric or 'accuracy':>10} {'Δ points':>9} {'loss':>8} {'ms/example':>11} {'× torch':>8}")
        baseline = None
        worst = 0.0
        for name, engine in engines.items():
            result = evaluate_model(engine, tokenizer, task, records, str(data))
            ms = latency_ms(engine, inputs)
            baseline = baseline or (result.accuracy, ms)
            points = (result.accuracy - baseline[0]) * 100
            worst = max(worst, abs(points))
            print(f"{name:<22} {result.accuracy:>10.4f} {points:>+9.1f} {result.loss:>8.4f} {ms:>11.1f} {ms / baseline[1]:>7.2f}×")
        print(f"largest difference from torch: {worst:.1f} points (goal: within {GOAL_POINTS:.0f}) — {'met' if worst <= GOAL_POINTS else 'NOT met'}")


if __name__ == "__main__":
    main()
