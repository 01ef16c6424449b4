"""Measure one real training configuration: peak memory and step time of fedge's trainer on SmolLM2-135M.

Each measurement runs in a fresh process (``python benchmarks/measure_training.py SETUP_JSON``) so that one
configuration's memory never leaks into the next; ``measure`` is the parent's side. Token ids are random: memory
and time do not depend on the text.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict

from rich.console import Console

from fedge.profiles.memory import TrainingSetup
from fedge.quantization.backbone import DEFAULT_BACKBONE

THREADS = 2
STEPS = 3
GPU_STEPS = (3, 10)  # (untimed, timed): a GPU's first steps carry one-off costs (kernel and cuBLAS set-up) that a round's many steps do not
NUM_LAYERS = 30  # SmolLM2-135M
QV = ("q_proj", "v_proj")
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def start(description: str) -> tuple[str, bool, Console]:
    """The ``--backend`` and ``--quick`` arguments of a benchmark, with torch fixed at THREADS threads, and a wide
    console (tables stay whole when the output goes to a file)."""
    import torch

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--backend", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="three configurations only, to check the benchmark still runs")
    torch.set_num_threads(THREADS)
    args = parser.parse_args()
    return args.backend, args.quick, Console(width=180)


def top_setup(quantization: str, ranks: int | tuple[int, ...], depth: int, targets: tuple[str, ...], batch: int, seq: int, optimizer: str = "adamw", checkpointing: bool = False, examples: int = 64,
              answer_share: float = 0.0, num_layers: int = NUM_LAYERS) -> TrainingSetup:
    """A setup adapting the top ``depth`` of ``num_layers`` layers; ``ranks`` is one rank for all, or one per layer
    from the top."""
    layers = tuple(range(num_layers - depth, num_layers))
    per_layer = (ranks,) * depth if isinstance(ranks, int) else tuple(reversed(ranks))
    return TrainingSetup(quantization, layers, per_layer, targets, batch, seq, optimizer, checkpointing, examples, answer_share=answer_share)


def describe(setup: TrainingSetup) -> str:
    ranks = str(setup.ranks[0]) if len(set(setup.ranks)) == 1 else f"{max(setup.ranks)}→{min(setup.ranks)}"
    targets = "qv" if setup.target_modules == QV else "all" if setup.target_modules == ALL else ",".join(setup.target_modules)
    extras = (" ckpt" if setup.gradient_checkpointing else "") + (f" {setup.optimizer}" if setup.optimizer != "adamw" else "") + (f" instruct {setup.answer_share:.0%} answer" if setup.answer_share else "")
    return f"{setup.quantization} D{setup.depth} r{ranks} {targets} b{setup.batch_size} s{setup.seq_len} n{setup.cached_examples}{extras}"


def measure(setup: TrainingSetup, device: str = "cpu", backbone: str = DEFAULT_BACKBONE) -> dict:
    """Run ``setup`` on ``backbone`` (a name or checkpoint directory) in a child process; returns ``{"peak_bytes",
    "step_seconds"}``."""
    done = subprocess.run([sys.executable, __file__, json.dumps(asdict(setup)), device, backbone], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measurement failed for {setup}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _run(setup: TrainingSetup, device: str, backbone: str) -> dict:
    import torch

    from fedge.edge_agent.trainer import BatchSampler, train_local
    from fedge.lora import build_lora_model
    from fedge.task.classifier import Classifier, EncodedExamples, label_token_ids
    from fedge.task.instruction import EncodedDialogues, InstructionTuner
    from fedge.task.next_token import IGNORE
    from fedge.task.prefix import FrozenPrefix
    from fedge.task.wordnet import WORDNET_TASK
    from fedge.wire import LoraSpec, TaskSpec
    from fedge.quantization.backbone import BackboneSource, load_backbone, locate_backbone, needs_loss_scaling
    from fedge.quantization.package import chunk_bytes_for, package_backbone

    torch.set_num_threads(THREADS)
    package = package_backbone(locate_backbone(backbone), setup.quantization, chunk_bytes_for(512))  # what an agent receives
    model, tokenizer = load_backbone(BackboneSource("package", package.directory, package.digest), setup.quantization, device)
    spec = LoraSpec(setup.target_modules, setup.layers, setup.ranks, 2.0)
    runner = FrozenPrefix(build_lora_model(model, spec, seed=0), min(setup.layers), setup.gradient_checkpointing)
    generator = torch.Generator().manual_seed(0)
    examples = max(setup.cached_examples, setup.batch_size)
    input_ids = torch.randint(0, tokenizer.vocab_size, (examples, setup.seq_len), generator=generator)
    lengths = torch.full((examples,), setup.seq_len)
    if setup.answer_share:  # instruct: the last answer_share of every row is the answer
        task = InstructionTuner(runner, tokenizer, TaskSpec("instruct", (), "", setup.seq_len, "token_f1", 1, 1))
        targets = torch.full_like(input_ids, IGNORE)
        first = setup.seq_len - round(setup.seq_len * setup.answer_share)
        targets[:, first - 1 : -1] = input_ids[:, first:]
        data = EncodedDialogues(input_ids, lengths, targets, [], []).to(device)
    else:
        task = Classifier(runner, label_token_ids(tokenizer, WORDNET_TASK.labels))
        data = EncodedExamples(input_ids, lengths, torch.randint(0, 8, (examples,), generator=generator)).to(device)
    cache = runner.cache(data)
    cache.fill(range(len(data)))  # the whole cache is resident, as the planner counts it
    loss_scaling = needs_loss_scaling(setup.quantization, device)  # as the agent trains
    sampler = BatchSampler(len(data), 0)

    def train(steps: int):
        return train_local(task, cache, sampler, steps, setup.batch_size, 1e-3, optimizer=setup.optimizer, loss_scaling=loss_scaling)

    untimed, timed = (0, STEPS) if device == "cpu" else GPU_STEPS
    if untimed:
        train(untimed)
    result = train(timed)
    return {"peak_bytes": result.peak_memory_bytes, "step_seconds": result.seconds_per_step}


if __name__ == "__main__":
    raw = json.loads(sys.argv[1])
    for key in ("layers", "ranks", "target_modules"):
        raw[key] = tuple(raw[key])
    print(json.dumps(_run(TrainingSetup(**raw), sys.argv[2], sys.argv[3])))
