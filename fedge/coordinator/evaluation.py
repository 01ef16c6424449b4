"""The global model on the coordinator: held-out evaluation of a strategy's global parts, and export in PEFT format."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from fedge.adapters import apply_frozen_changes, lora_layers
from fedge.lora import adapter_arrays, build_lora_model, load_adapter_arrays, uniform_spec
from fedge.strategies import GlobalParts
from fedge.task.classifier import Evaluation
from fedge.task.kinds import kind_of
from fedge.task.prefix import FrozenPrefix
from fedge.wire import TaskSpec
from fedge.quantization.backbone import BackboneSource, load_backbone

log = logging.getLogger(__name__)


class GlobalModel:
    """Backbone plus a rank-R adapter over every layer any device adapts (scaling 1: alpha = R)."""

    def __init__(self, source: BackboneSource, rank: int, layers: list[int], target_modules: list[str], task: TaskSpec, test: list, seed: int):
        """``test`` holds the task kind's held-out items (``TaskKind.items``)."""
        model, tokenizer = load_backbone(source, "fp32")
        self.rank = rank
        self.tokenizer = tokenizer
        self.spec = uniform_spec(rank, 1.0, target_modules, layers)
        runner = FrozenPrefix(build_lora_model(model, self.spec, seed=seed), min(layers))
        self.task = kind_of(task.kind).model(runner, tokenizer, task)
        self.model = runner.model
        self.test = runner.cache(self.task.encode(test))
        self._applied_rounds: set[int] = set()  # base changes already merged into this copy

    def initial_arrays(self) -> dict[str, np.ndarray]:
        """peft's own initialisation (A random, B zero), the common starting point of every device."""
        return adapter_arrays(self.model)

    def base_weights(self) -> dict[str, np.ndarray]:
        """The frozen weight W0 (d×k) of every adapted module, by module name."""
        return {name: layer.get_base_layer().weight.detach().float().numpy().copy() for name, layer in lora_layers(self.model)}

    def load(self, parts: GlobalParts) -> None:
        """Put a strategy's global parts into the model: LoRA factors (zero when there are none), base changes not
        merged yet, and replaced weights."""
        if parts.lora is not None:
            load_adapter_arrays(self.model, parts.lora)
        else:
            for _, layer in lora_layers(self.model):
                torch.nn.init.zeros_(layer.lora_B["default"].weight)
        self.test.weights_changed(apply_frozen_changes(self.model, parts, self._applied_rounds))

    def evaluate(self, parts: GlobalParts) -> Evaluation:
        self.load(parts)
        return self.task.evaluate(self.test)

    def save(self, parts: GlobalParts, directory: Path) -> None:
        """Write the adapter so ``PeftModel.from_pretrained(backbone, directory)`` loads it (base changes and
        replaced weights are in the run's global state files, not in the adapter)."""
        self.load(parts)
        self.model.save_pretrained(directory)
