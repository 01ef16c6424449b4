"""fedge: federated LoRA fine-tuning for heterogeneous edge devices over MQTT."""

import logging

__version__ = "0.1.0"


class _HideKernelsNotice(logging.Filter):
    """bitsandbytes asks every AVX512 CPU user to ``pip install kernels`` when it is imported (by peft and
    transformers too); the portable kernel it falls back to is the one fedge uses, so there is nothing to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_HideKernelsNotice())
