"""Backbone loading per backend (NF4 / INT8 on CUDA with bitsandbytes, 16/32-bit elsewhere)."""

from fedge.quantization.backbone import BackboneSource, load_backbone, locate_backbone, resolve_dtype

__all__ = ["BackboneSource", "load_backbone", "locate_backbone", "resolve_dtype"]
