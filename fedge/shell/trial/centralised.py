"""The centralised reference of a trial: the same backbone and task trained on the devices' pooled data.

One LoRA adapter (rank ``rank`` on the top ``depth`` layers, scaling α/r as the planner's) trains on the union of the
shards, and each "round" takes as many steps as the whole fleet takes in a round (``local_steps`` × devices), so it
sees as many examples as the federation does. Its held-out score after each round is the upper reference a
federated curve is compared with; round 0 is the pretrained model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fedge.edge_agent.trainer import BatchSampler, train_local
from fedge.lora import build_lora_model, uniform_spec
from fedge.task.data import read_rows
from fedge.task.kinds import kind_of
from fedge.task.prefix import FrozenPrefix
from fedge.wire import TaskSpec
from fedge.profiles.model_shape import load_model_shape
from fedge.quantization.backbone import load_backbone, locate_backbone


def centralised_scores(
    backbone: str, task: TaskSpec, pooled: Path, test: Path, rounds: int, steps_per_round: int, batch_size: int,
    learning_rate: float, depth: int, rank: int, scaling: float, seed: int, on_round: Callable[[int, float, float], None],
) -> list[dict]:
    """[{round, accuracy, loss}] for rounds 0..``rounds``; ``on_round(round, score, loss)`` after each."""
    source = locate_backbone(backbone)
    model, tokenizer = load_backbone(source)
    shape = load_model_shape(str(source.directory))
    layers = list(range(shape.num_layers - depth, shape.num_layers))
    peft_model = build_lora_model(model, uniform_spec(rank, scaling, shape.default_targets, layers), seed=seed)
    kind = kind_of(task.kind)
    task_model = kind.model(FrozenPrefix(peft_model, min(layers)), tokenizer, task)
    train, held_out = (task_model.runner.cache(task_model.encode(kind.items(read_rows(path), task, str(path)))) for path in (pooled, test))
    sampler = BatchSampler(len(train), seed)
    records = []
    for round_number in range(rounds + 1):
        if round_number:
            train_local(task_model, train, sampler, steps_per_round, batch_size, learning_rate)
        result = task_model.evaluate(held_out)
        records.append({"round": round_number, "accuracy": result.accuracy, "loss": result.loss})
        on_round(round_number, result.accuracy, result.loss)
    return records
