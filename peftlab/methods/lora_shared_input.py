"""LoRA layers that read the same input (q/k/v, gate/up) run as one fused call, so ``X`` is read once.

``peftlab.kernels.lora_linear_shared_input`` computes ``Y_i = X·W_iᵀ (+ b_i) + s_i·dropout_i(X)·A_iᵀ·B_iᵀ``
for several layers in one launch (forward and backward). This module decides where that call can stand
in for the per-layer ``lora_linear`` calls:

* **Structure suggests.** LoRA layers under one parent whose names sit together in
  ``SHARED_INPUT_SIBLINGS`` (``q_proj``/``k_proj``/``v_proj``, ``gate_proj``/``up_proj``,
  ``query``/``key``/``value``, ...) form a ``SharedInputGroup``.
* **The call confirms.** A *round* starts when a member is called and no round is open: that call
  computes every member's output in one fused call and keeps the siblings' outputs. A sibling is
  served from them only when it is called with the very same tensor (same object, same ``_version``),
  in the same grad / inference / autocast mode, with its weights and settings unchanged since. Anything
  else drops the round's outputs and the remaining members run their own per-layer path: never a wrong
  answer, at worst a wasted launch.
* **Nothing is held.** Each cached output is dropped as it is served and the round closes once every
  member was called; a member called twice closes the open round first. ``LoRA.forward`` closes any
  open round when the model returns, so no tensor outlives a forward. Gradient checkpointing
  recomputes a block by calling its members again, which simply runs a fresh round (dropout seeds come
  from PyTorch's CPU generator, which checkpointing restores).

Members that are merged, detached, in different train/eval modes or with different dropout/kernel
settings are not fused. A group whose rounds keep breaking (cross-attention, where ``q`` reads the
decoder and ``k``/``v`` the encoder) stops fusing after ``MAX_BROKEN_ROUNDS`` broken rounds in a row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

import peftlab.kernels as kernels

if TYPE_CHECKING:
    from peftlab.methods.lora import LoRALinear

__all__ = [
    "FUSE_SHARED_INPUT_MODES",
    "MAX_BROKEN_ROUNDS",
    "SHARED_INPUT_SIBLINGS",
    "SharedInputGroup",
    "attach_shared_input_groups",
    "detach_shared_input_groups",
    "find_shared_input_siblings",
]

# "auto": fuse where the Triton kernels run (kernel="triton", or kernel="auto" on CUDA); "on": always
# (with kernel="torch" the grouped call is the per-layer reference); "off": never.
FUSE_SHARED_INPUT_MODES = ("auto", "on", "off")
# Sibling names that read the same hidden states when they share a parent module.
SHARED_INPUT_SIBLINGS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj"),  # Llama, Qwen, Mistral, Gemma, OPT, BART attention
    ("gate_proj", "up_proj"),  # Llama-style gated MLP
    ("query", "key", "value"),  # BERT, RoBERTa, ELECTRA self-attention
    ("q", "k", "v"),  # T5 attention
)
MAX_BROKEN_ROUNDS = 3


@dataclass
class _Round:
    """One fused call's results, waiting for the siblings that have not been called yet."""

    input: torch.Tensor
    input_version: int
    context: tuple[Any, ...]
    member_states: tuple[tuple[Any, ...], ...]
    outputs: dict[int, torch.Tensor]
    not_called: set[int]
    broken: bool = False


class SharedInputGroup:
    """Sibling ``LoRALinear`` layers under ``parent`` that may share an input; see the module docstring.

    Not an ``nn.Module``: it adds no parameters, buffers or state-dict keys. Each member points at it
    through ``LoRALinear.shared_input_group``.
    """

    def __init__(self, parent: nn.Module, names: Sequence[str], mode: str) -> None:
        if mode not in ("auto", "on"):
            raise ValueError(f"a shared-input group needs fuse_shared_input 'auto' or 'on', got {mode!r}")
        if not 2 <= len(names) <= kernels.MAX_SHARED_INPUT_LAYERS:
            raise ValueError(
                f"a shared-input group takes 2 to {kernels.MAX_SHARED_INPUT_LAYERS} layers, got {list(names)}"
            )
        self.parent = parent
        self.names = tuple(names)
        self.members: tuple[LoRALinear, ...] = tuple(getattr(parent, name) for name in self.names)
        self.mode = mode
        self.enabled = True  # turned off for good after MAX_BROKEN_ROUNDS broken rounds in a row
        self.broken_rounds = 0
        self._round: _Round | None = None

    def __repr__(self) -> str:
        return f"SharedInputGroup({', '.join(self.names)}, mode={self.mode!r}, enabled={self.enabled})"

    @property
    def holds_tensors(self) -> bool:
        """True while a round is open (its input and any unserved outputs are referenced)."""
        return self._round is not None

    def output_for(self, member: LoRALinear, x: torch.Tensor) -> torch.Tensor | None:
        """``member``'s output for ``x`` from a fused call, or ``None``: then ``member`` runs its own path."""
        index = next((i for i, own in enumerate(self.members) if own is member), None)
        if index is None:  # a shallow copy of a member (``nn.DataParallel`` replicas) is not in the group
            return None
        current = self._round
        if current is not None and index in current.not_called:
            return self._serve(current, index, x)
        self.release()  # no round, or ``member`` called again: its siblings did not take their outputs
        if not self._can_fuse(x):
            return None
        context, states, version = _context(x), tuple(_member_state(m) for m in self.members), x._version
        outputs = self._fused_outputs(x)
        others = set(range(len(self.members))) - {index}
        self._round = _Round(
            input=x,
            input_version=version,
            context=context,
            member_states=states,
            outputs={i: outputs[i] for i in others},
            not_called=others,
        )
        return outputs[index]

    def release(self) -> None:
        """Close the open round, dropping outputs no sibling took (counted as a broken round)."""
        current, self._round = self._round, None
        if current is None:
            return
        if current.broken or current.not_called:
            self.broken_rounds += 1
            if self.broken_rounds >= MAX_BROKEN_ROUNDS:
                self.enabled = False
        else:
            self.broken_rounds = 0

    def _serve(self, current: _Round, index: int, x: torch.Tensor) -> torch.Tensor | None:
        current.not_called.discard(index)
        output = current.outputs.pop(index, None)
        same_call = (
            output is not None
            and x is current.input
            and x._version == current.input_version
            and _context(x) == current.context
            and _member_state(self.members[index]) == current.member_states[index]
        )
        if not same_call:
            output = None
            current.outputs.clear()
            current.broken = True
        if not current.not_called:
            self.release()
        return output

    def _can_fuse(self, x: torch.Tensor) -> bool:
        if not self.enabled or not isinstance(x, torch.Tensor) or x.is_inference():
            return False  # an inference tensor has no version counter to prove it unchanged
        first = self.members[0]
        if self.mode == "auto" and not (first.kernel == "triton" or (first.kernel == "auto" and x.is_cuda)):
            return False
        return all(
            getattr(self.parent, name, None) is member
            and not member.merged
            and member.training == first.training
            and member.dropout == first.dropout
            and member.kernel == first.kernel
            and not any(t is not None and t.is_inference() for t in _member_tensors(member))
            for name, member in zip(self.names, self.members, strict=True)
        )

    def _fused_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        first = self.members[0]
        return kernels.lora_linear_shared_input(
            x,
            [member.weight_out_in() for member in self.members],
            [member.base_layer.bias for member in self.members],
            [member.lora_A for member in self.members],
            [member.lora_B for member in self.members],
            [member.scaling for member in self.members],
            dropout_p=first.dropout,
            training=first.training,
            backend=first.kernel,
        )


def _context(x: torch.Tensor) -> tuple[Any, ...]:
    """The modes that change what a layer's output is (gradients, inference mode, autocast)."""
    device = x.device.type
    autocast = None
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        autocast = torch.get_autocast_dtype(device)
    return torch.is_grad_enabled(), torch.is_inference_mode_enabled(), autocast


def _member_state(layer: LoRALinear) -> tuple[Any, ...]:
    """What a layer's output depends on besides its input: settings, and each tensor's identity and version."""
    versions = tuple(None if t is None else (id(t), t._version) for t in _member_tensors(layer))
    return (layer.merged, layer.training, layer.scaling, layer.dropout, layer.kernel, *versions)


def _member_tensors(layer: LoRALinear) -> tuple[torch.Tensor | None, ...]:
    return layer.base_layer.weight, layer.base_layer.bias, layer.lora_A, layer.lora_B


def find_shared_input_siblings(layer_names: Iterable[str]) -> list[tuple[str, tuple[str, ...]]]:
    """``(parent name, sibling leaf names)`` for every parent holding two or more layers of one sibling set.

    ``layer_names`` are full module names of LoRA layers (``model.layers.0.self_attn.q_proj``, ...).
    """
    children: dict[str, set[str]] = {}
    for name in layer_names:
        parent, _, leaf = name.rpartition(".")
        children.setdefault(parent, set()).add(leaf)
    found = []
    for parent, leaves in children.items():
        for siblings in SHARED_INPUT_SIBLINGS:
            present = tuple(leaf for leaf in siblings if leaf in leaves)
            if len(present) >= 2:
                found.append((parent, present))
    return found


def attach_shared_input_groups(
    model: nn.Module, layers: dict[str, LoRALinear], mode: str
) -> list[SharedInputGroup]:
    """Group the sibling ``layers`` of ``model`` that may share an input; none when ``mode`` is ``"off"``."""
    if mode == "off":
        return []
    groups = []
    for parent_name, names in find_shared_input_siblings(layers):
        parent = model.get_submodule(parent_name) if parent_name else model
        group = SharedInputGroup(parent, names, mode)
        for member in group.members:
            member.shared_input_group = group
        groups.append(group)
    return groups


def detach_shared_input_groups(groups: Iterable[SharedInputGroup]) -> None:
    """Close every group's round and unlink its members, which then run their own per-layer path."""
    for group in groups:
        group.release()
        for member in group.members:
            if member.shared_input_group is group:
                member.shared_input_group = None
