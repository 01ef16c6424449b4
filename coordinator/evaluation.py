"""The global model on the coordinator: held-out evaluation and export in PEFT format."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fedge.lora import adapter_arrays, load_adapter_arrays, uniform_spec
from fedge.task.classifier import Evaluation, encode, evaluate, lora_classifier
from fedge.task.wordnet import Example
from quantization.backbone import BackboneSource, load_backbone

log = logging.getLogger(__name__)


class GlobalModel:
    """Backbone plus a rank-R adapter over every layer any device adapts (scaling 1: alpha = R)."""

    def __init__(self, source: BackboneSource, rank: int, layers: list[int], target_modules: list[str], test: list[Example], seed: int):
        model, tokenizer = load_backbone(source, "fp32")
        self.rank = rank
        self.runner = lora_classifier(model, tokenizer, uniform_spec(rank, 1.0, target_modules, layers), seed)
        self.model = self.runner.model
        self.test = encode(tokenizer, test)
        log.info("caching evaluation states for %d examples below layer %d", len(test), min(layers))
        self.prefix = self.runner.cache(self.test.input_ids)

    def initial_arrays(self) -> dict[str, np.ndarray]:
        """peft's own initialisation (A random, B zero), the common starting point of every device."""
        return adapter_arrays(self.model)

    def evaluate(self, arrays: dict[str, np.ndarray]) -> Evaluation:
        load_adapter_arrays(self.model, arrays)
        return evaluate(self.runner, self.prefix, self.test)

    def save(self, arrays: dict[str, np.ndarray], directory: Path) -> None:
        """Write the adapter so ``PeftModel.from_pretrained(backbone, directory)`` loads it."""
        load_adapter_arrays(self.model, arrays)
        self.model.save_pretrained(directory)
