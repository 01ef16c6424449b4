"""A causal LM split below its lowest adapted layer, and a bounded, lazily filled cache of the frozen bottom's output.

LoRA sits only on the top D layers, so everything below the lowest adapted layer is frozen and deterministic: its
output for an example never changes until a frozen weight does. ``FrozenPrefix`` runs the two halves separately, and
``PrefixCache`` keeps the bottom's output of the rows training or evaluation actually asks for, computed the first
time a row is needed (or ahead of need, ``fill``), so a training step runs only the adapted top. This is exact, not an
approximation, and it is what makes a 30-layer model trainable on two CPU cores in minutes.

A row (what a sampler deals: an example) is one or more sequences of right-padded token ids (classify with
multi-token labels gives an example one sequence per label). A sequence's states are kept at its own length, and a
batch is padded with zeros to its longest sequence. Causal attention never lets a real token see a later (padding)
position, so padding never changes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedge.decoder import decoder_parts


@dataclass
class EncodedRows:
    """Token ids of a dataset, right-padded, with each row's real length; tasks subclass it to add their targets."""

    input_ids: torch.Tensor  # (sequences, t)
    lengths: torch.Tensor  # (sequences,)

    def __len__(self) -> int:
        """Rows (examples)."""
        return len(self.lengths)

    def sequences(self, rows: torch.Tensor | list[int]) -> list[int]:
        """The sequences (rows of ``input_ids``) that make up ``rows``, in order: one per row here."""
        return [int(row) for row in rows]


class FrozenPrefix:
    """Runs a causal LM's decoder split at ``start_layer``: a frozen bottom and a trainable top."""

    def __init__(self, model, start_layer: int, gradient_checkpointing: bool = False):
        self.model = model
        self.gradient_checkpointing = gradient_checkpointing
        self.decoder = decoder_parts(model)
        self.start_layer = start_layer
        self.num_layers = len(self.decoder.layers)
        if not 0 <= start_layer < self.num_layers:
            raise ValueError(f"start_layer {start_layer} outside 0..{self.num_layers - 1}")

    @torch.no_grad()
    def bottom(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Hidden states entering ``start_layer`` for a batch of rows."""
        return self.decoder.run_layers(self.decoder.embed_tokens(input_ids), 0, self.start_layer)

    def top(self, states: torch.Tensor) -> torch.Tensor:
        """The final-normed hidden states from states entering ``start_layer``, through the adapted layers."""
        checkpointed = self.gradient_checkpointing and torch.is_grad_enabled()
        return self.decoder.norm(self.decoder.run_layers(states, self.start_layer, self.num_layers, checkpointed))

    def cache(self, data: EncodedRows, max_bytes: int | None = None) -> PrefixCache:
        return PrefixCache(self, data, max_bytes)


class PrefixCache:
    """The frozen bottom's output for the sequences of one dataset's rows, computed when first asked for and kept
    while the cache holds less than ``max_bytes`` (None: no bound); sequences beyond the bound are recomputed each time."""

    def __init__(self, runner: FrozenPrefix, data: EncodedRows, max_bytes: int | None = None, chunk_rows: int = 32):
        self.runner = runner
        self.data = data
        self.max_bytes = max_bytes
        self.chunk_rows = chunk_rows
        self._states: dict[int, torch.Tensor] = {}
        self.bytes = 0
        self.computed_rows = 0  # sequences run through the bottom so far, recomputations included

    def __len__(self) -> int:
        return len(self.data)

    def missing(self, rows: torch.Tensor | list[int]) -> list[int]:
        """The distinct rows among ``rows`` with a sequence not cached, in first-seen order."""
        return [row for row in dict.fromkeys(int(r) for r in rows) if any(s not in self._states for s in self.data.sequences([row]))]

    def fill(self, rows: torch.Tensor | list[int]) -> dict[int, torch.Tensor]:
        """Compute the rows' sequences not cached yet (in chunks of similar length) and keep those the bound allows;
        returns the states computed, kept or not, by sequence."""
        wanted = dict.fromkeys(self.data.sequences(rows))
        missing = sorted((s for s in wanted if s not in self._states), key=lambda sequence: int(self.data.lengths[sequence]))
        computed = {}
        for begin in range(0, len(missing), self.chunk_rows):
            chunk = missing[begin : begin + self.chunk_rows]
            width = int(self.data.lengths[chunk].max())
            states = self.runner.bottom(self.data.input_ids[chunk, :width])
            self.computed_rows += len(chunk)
            for position, sequence in enumerate(chunk):
                state = states[position, : int(self.data.lengths[sequence])].clone()
                computed[sequence] = state
                size = state.numel() * state.element_size()
                if self.max_bytes is None or self.bytes + size <= self.max_bytes:
                    self._states[sequence] = state
                    self.bytes += size
        return computed

    def batch(self, rows: torch.Tensor) -> torch.Tensor:
        """(sequences of rows, longest, hidden) states entering the adapted layers, zero past each sequence's length."""
        fresh = self.fill(rows)
        states = [self._states.get(sequence, fresh.get(sequence)) for sequence in self.data.sequences(rows)]
        out = states[0].new_zeros((len(states), max(len(state) for state in states), states[0].shape[-1]))
        for position, state in enumerate(states):
            out[position, : len(state)] = state
        return out

    def clear(self) -> None:
        """Forget every row."""
        self._states.clear()
        self.bytes = 0

    def weights_changed(self, lowest_layer: int | None) -> None:
        """Forget every row when a frozen weight changed in a layer the cached states passed through."""
        if lowest_layer is not None and lowest_layer < self.runner.start_layer:
            self.clear()

    @property
    def cached_rows(self) -> int:
        """Sequences held."""
        return len(self._states)
