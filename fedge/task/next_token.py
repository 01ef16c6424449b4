"""The next-token loss on chosen positions of a causal LM's final states, without the whole vocabulary's logits.

Tasks mark the positions that carry loss with their target token (``IGNORE`` elsewhere): instruct marks answer
tokens, classify with multi-token labels marks each label's tokens. The full-vocabulary output layer runs on those
positions alone, ``LOSS_CHUNK_TOKENS`` at a time, and recomputes its logits during backward, so its memory is one
chunk's logits whatever the batch (``fedge.profiles.memory`` counts it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from fedge.profiles.memory import LOSS_CHUNK_TOKENS

IGNORE = -100


def target_losses(hidden: torch.Tensor, targets: torch.Tensor, output: torch.nn.Module) -> torch.Tensor:
    """The cross-entropy of the next token at every position whose target is not ``IGNORE`` (row-major order),
    with the full-vocabulary output layer on ``LOSS_CHUNK_TOKENS`` positions at a time, recomputed in backward."""
    targets = targets.to(hidden.device)
    keep = targets != IGNORE
    hidden, targets = hidden[keep], targets[keep]
    parts = []
    for begin in range(0, len(targets), LOSS_CHUNK_TOKENS):
        chunk = slice(begin, begin + LOSS_CHUNK_TOKENS)
        if torch.is_grad_enabled():
            parts.append(checkpoint(_chunk_losses, hidden[chunk], targets[chunk], output.weight, output.bias, use_reentrant=False))
        else:
            parts.append(_chunk_losses(hidden[chunk], targets[chunk], output.weight, output.bias))
    return torch.cat(parts) if parts else hidden.new_zeros(0)


def _chunk_losses(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    logits = hidden @ weight.T.to(hidden.dtype)
    if bias is not None:
        logits = logits + bias.to(logits.dtype)
    return F.cross_entropy(logits.float(), targets, reduction="none")
