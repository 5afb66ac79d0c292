"""Prefix keys/values injected at the attention call, through ``transformers``' ``AttentionInterface``.

``transformers`` 5.x routes every attention layer through a function looked up by the config's
``_attn_implementation``; it receives the layer module (with ``module.layer_idx``) and the projected
(and, for rotary models, rotated) query/key/value states. We register one such function per wrapped
implementation (``peftlab_prefix_sdpa``, ``peftlab_prefix_eager``). It concatenates the layer's learned
prefix in front of the keys and values, gives the attention mask matching always-visible columns, and
calls the wrapped implementation. The model's KV cache is never touched: it keeps real tokens only,
and the prefix is concatenated again at every call, so training, evaluation, gradient checkpointing and
``generate()`` all take the same path. GQA needs nothing special: the prefix has ``num_key_value_heads``
heads, like the keys it is concatenated to.

Masks, as ``transformers`` 5.23 hands them to sdpa/eager: ``None`` or a 4-D ``[batch|1, 1|heads, q, kv]``
tensor, boolean (sdpa: True = attend) or additive float (eager: 0 or the dtype's minimum). A 4-D mask
gains ``num_virtual_tokens`` visible columns in front. ``None`` means "attend to everything" unless sdpa
would fall back to ``is_causal`` (no mask, causal module, more than one query); then an explicit mask is
built whose causal part is offset by the prefix length, because sdpa's own ``is_causal`` would misalign
(or, for a longer key than query, crop) the keys.

Eager is wrapped as the model file's ``eager_attention_forward`` (what the model calls for "eager"). GPT-2
with ``reorder_and_upcast_attn=True`` bypasses the interface under plain eager; wrapped, it uses the
standard eager function instead (the same math, without the float32 upcast of the scores).
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from peftlab.errors import AdapterError

# Implementations a prefix can wrap: both take plain tensors and a tensor (or no) mask.
WRAPPABLE = ("sdpa", "eager")
NAME_PREFIX = "peftlab_prefix_"
# Length of the input the probe forward runs: two tokens, so causal models take their multi-query path.
PROBE_LENGTH = 2


class PrefixSource(Protocol):
    """Anything that yields a layer's prefix: ``(keys, values)``, each ``[kv_heads, num_virtual_tokens, head_dim]``."""

    def layer_prefix(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class AttentionLayout:
    """What a probe forward saw: the attention modules in layer order and the key/value shape they share."""

    modules: tuple[nn.Module, ...]
    num_key_value_heads: int
    head_dim: int

    @property
    def num_layers(self) -> int:
        """How many attention layers take a prefix."""
        return len(self.modules)

    @property
    def kv_dim(self) -> int:
        """Width of one layer's key (or value) prefix per virtual token: ``num_key_value_heads * head_dim``."""
        return self.num_key_value_heads * self.head_dim


@dataclass(frozen=True)
class _ProbeCall:
    module: nn.Module
    layer_idx: Any
    key: torch.Tensor  # [batch, kv_heads, length, head_dim], detached
    value: torch.Tensor

    @property
    def key_shape(self) -> tuple[int, ...]:
        return tuple(self.key.shape)

    @property
    def value_shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape)


# Attention module -> the source of its layer's prefix. Weak keys: a model that is dropped unbinds itself.
_BINDINGS: weakref.WeakKeyDictionary[nn.Module, PrefixSource] = weakref.WeakKeyDictionary()
# Set only while ``probe_attention_layout`` runs: unbound modules record their call instead of failing.
_PROBE_CALLS: ContextVar[list[_ProbeCall] | None] = ContextVar("peftlab_prefix_probe", default=None)


def implementation_name(wrapped: str) -> str:
    """The registered implementation name that wraps ``wrapped`` (e.g. ``"peftlab_prefix_sdpa"``)."""
    return NAME_PREFIX + wrapped


def wrapped_implementation(name: str | None) -> str | None:
    """The implementation a registered prefix name wraps, or ``None`` when ``name`` is not one of ours."""
    if name and name.startswith(NAME_PREFIX) and name[len(NAME_PREFIX) :] in WRAPPABLE:
        return name[len(NAME_PREFIX) :]
    return None


def register_prefix_attention() -> None:
    """Register the prefix attention functions and their mask builders (idempotent)."""
    for wrapped in WRAPPABLE:
        name = implementation_name(wrapped)
        AttentionInterface.register(name, _prefix_attention(wrapped))
        # transformers builds the mask by implementation name: give ours exactly the wrapped one's masks.
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[wrapped])


def check_attention_implementation(model: nn.Module, owner: str) -> str:
    """The model's current attention implementation, if prefix tuning can wrap it; else a clear ``AdapterError``."""
    name = type(model).__name__
    if not isinstance(model, PreTrainedModel):
        raise AdapterError(f"{owner}: {name} is not a transformers PreTrainedModel; prefix tuning injects its keys and "
                           "values through transformers' AttentionInterface")
    if not model._can_set_attn_implementation():
        raise AdapterError(
            f"{owner}: {name} does not route attention through transformers' AttentionInterface "
            "(its attention cannot be switched with set_attn_implementation), so there is no call to add prefixes at"
        )
    current = model.config._attn_implementation
    if wrapped_implementation(current) is not None:
        raise AdapterError(
            f"{owner}: {name} already has prefix tuning attached (attention implementation {current!r}); "
            "apply it to a fresh model, or detach the first one (method.detach_from(model))"
        )
    if current not in WRAPPABLE:
        raise AdapterError(
            f"{owner}: {name} uses attention implementation {current!r}; prefix tuning wraps "
            f"{' or '.join(map(repr, WRAPPABLE))}. Call model.set_attn_implementation('sdpa') first"
        )
    return current


def probe_attention_layout(model: PreTrainedModel, wrapped: str, owner: str) -> AttentionLayout:
    """Run a two-token forward with the prefix function installed and record which modules call it.

    Raises ``AdapterError`` when no module calls the attention interface, a call has no integer
    ``layer_idx``, a layer index repeats (cross-attention) or misses, or layers disagree on key shapes.
    The model's attention implementation, train/eval modes and the RNG are left as they were.
    """
    probe_ids = torch.zeros(1, PROBE_LENGTH, dtype=torch.long, device=model.device)
    return _layout_from_calls(model, _record_calls(model, wrapped, probe_ids, owner), owner)


def layer_key_values(
    model: PreTrainedModel,
    wrapped: str,
    layout: AttentionLayout,
    input_ids: torch.Tensor,
    owner: str,
    position_ids: torch.Tensor | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The keys and values every attention layer computes for ``input_ids`` ``[1, T]`` (eval mode, no grad).

    One ``(keys, values)`` pair per layer of ``layout``, in layer order, each ``[kv_heads, T, head_dim]``,
    as the attention call receives them (rotary models: already rotated for ``position_ids``).
    """
    calls = {id(call.module): call for call in _record_calls(model, wrapped, input_ids, owner, position_ids)}
    missing = [index for index, module in enumerate(layout.modules) if id(module) not in calls]
    if missing:
        raise AdapterError(f"{owner}: attention layers {missing} of {type(model).__name__} did not run on the init tokens")
    return [(calls[id(module)].key[0], calls[id(module)].value[0]) for module in layout.modules]


def _record_calls(
    model: PreTrainedModel, wrapped: str, input_ids: torch.Tensor, owner: str, position_ids: torch.Tensor | None = None
) -> list[_ProbeCall]:
    """Run ``model(input_ids)`` with the prefix function installed and no prefix bound; the calls it made."""
    register_prefix_attention()
    calls: list[_ProbeCall] = []
    token = _PROBE_CALLS.set(calls)
    try:
        with _implementation(model, implementation_name(wrapped)), _eval_mode(model), torch.no_grad():
            try:
                if position_ids is None:
                    model(input_ids=input_ids)
                else:
                    model(input_ids=input_ids, position_ids=position_ids)
            except AdapterError:
                raise
            except Exception as error:
                raise AdapterError(
                    f"{owner}: a probe forward of {type(model).__name__} on {input_ids.shape[-1]} token ids failed "
                    f"({type(error).__name__}: {error}); prefix tuning needs a text model that takes input_ids"
                ) from error
    finally:
        _PROBE_CALLS.reset(token)
    return calls


def bind(layout: AttentionLayout, source: PrefixSource, model: PreTrainedModel, wrapped: str) -> None:
    """Route the model's attention through the prefix function, with ``source`` supplying every layer's prefix."""
    register_prefix_attention()
    for module in layout.modules:
        _BINDINGS[module] = source
    try:
        model.set_attn_implementation(implementation_name(wrapped))
    except Exception:
        unbind(layout)
        raise


def unbind(layout: AttentionLayout, model: PreTrainedModel | None = None, wrapped: str | None = None) -> None:
    """Remove the prefix from the layout's modules and, given the model, restore its original implementation."""
    for module in layout.modules:
        _BINDINGS.pop(module, None)
    if model is not None and wrapped is not None and wrapped_implementation(model.config._attn_implementation):
        model.set_attn_implementation(wrapped)


def extend_mask(
    attention_mask: torch.Tensor | None,
    num_prefix: int,
    query: torch.Tensor,
    key_length: int,
    causal: bool,
    wrapped: str,
) -> torch.Tensor | None:
    """The attention mask for ``num_prefix`` always-visible columns prepended to ``key_length`` real keys.

    A 4-D mask gets the columns in front (True for boolean masks, 0 for additive ones). With no mask,
    the result stays ``None`` (everything visible) unless sdpa would apply ``is_causal`` (causal module,
    more than one query); then an explicit boolean mask is built in which query ``i`` sees every prefix
    column and real keys ``0 .. i + key_length - q_length`` (the cache's past tokens plus its own causal part).
    """
    q_length = query.shape[2]
    if attention_mask is None:
        if not (causal and wrapped == "sdpa" and q_length > 1):
            return None
        past = key_length - q_length
        rows = torch.arange(q_length, device=query.device)[:, None]
        columns = torch.arange(key_length, device=query.device)[None, :]
        real = columns <= rows + past
        visible = torch.ones(q_length, num_prefix, dtype=torch.bool, device=query.device)
        return torch.cat([visible, real], dim=1)[None, None]
    if attention_mask.dim() != 4:
        raise AdapterError(
            f"prefix attention expects a 4-D attention mask from transformers, got shape {tuple(attention_mask.shape)}"
        )
    shape = (*attention_mask.shape[:-1], num_prefix)
    if attention_mask.dtype == torch.bool:
        columns_mask = torch.ones(shape, dtype=torch.bool, device=attention_mask.device)
    else:
        columns_mask = torch.zeros(shape, dtype=attention_mask.dtype, device=attention_mask.device)
    return torch.cat([columns_mask, attention_mask], dim=-1)


def _prefix_attention(wrapped: str) -> Callable[..., Any]:
    """The attention function registered under ``implementation_name(wrapped)``."""

    def prefix_attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> Any:
        attention = _wrapped_function(wrapped, module)
        source = _BINDINGS.get(module)
        if source is None:
            calls = _PROBE_CALLS.get()
            if calls is None:
                raise AdapterError(
                    f"{type(module).__name__} (layer {getattr(module, 'layer_idx', None)}) runs the prefix attention "
                    f"{implementation_name(wrapped)!r} but has no prefix bound (the model was copied after prefix "
                    f"tuning was applied); call model.set_attn_implementation({wrapped!r}) on it and apply prefix "
                    "tuning again, or use the original PeftLabModel"
                )
            calls.append(_ProbeCall(module, getattr(module, "layer_idx", None), key.detach(), value.detach()))
            return attention(module, query, key, value, attention_mask, **kwargs)
        if kwargs.get("position_bias") is not None:
            raise AdapterError(
                f"{type(module).__name__} passes a position_bias to attention; prefix tuning does not extend position biases"
            )
        prefix_keys, prefix_values = source.layer_prefix(module.layer_idx)
        batch = key.shape[0]
        num_prefix = prefix_keys.shape[1]
        prefix_keys = prefix_keys.to(key.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        prefix_values = prefix_values.to(value.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        is_causal = kwargs.get("is_causal")
        causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
        attention_mask = extend_mask(attention_mask, num_prefix, query, key.shape[2], causal, wrapped)
        key = torch.cat([prefix_keys, key], dim=2)
        value = torch.cat([prefix_values, value], dim=2)
        return attention(module, query, key, value, attention_mask, **kwargs)

    prefix_attention.__name__ = f"prefix_attention_{wrapped}"
    return prefix_attention


def _wrapped_function(wrapped: str, module: nn.Module) -> Callable[..., Any]:
    """The function the model would call for ``wrapped``: sdpa from the registry, eager from the model's file."""
    if wrapped != "eager":
        return ALL_ATTENTION_FUNCTIONS[wrapped]
    eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if eager is None:
        raise AdapterError(
            f"{type(module).__name__}: its modeling file defines no eager_attention_forward to wrap; "
            "call model.set_attn_implementation('sdpa') before applying prefix tuning"
        )
    return eager


def _layout_from_calls(model: nn.Module, calls: list[_ProbeCall], owner: str) -> AttentionLayout:
    name = type(model).__name__
    if not calls:
        raise AdapterError(
            f"{owner}: no attention layer of {name} called transformers' AttentionInterface during a probe forward, "
            "so prefix tuning has nowhere to add its keys and values (the model computes attention itself)"
        )
    by_layer: dict[int, _ProbeCall] = {}
    for call in calls:
        kind = type(call.module).__name__
        if isinstance(call.layer_idx, bool) or not isinstance(call.layer_idx, int):
            raise AdapterError(
                f"{owner}: attention module {kind} of {name} has no integer layer_idx ({call.layer_idx!r}); "
                "prefix tuning needs it to pick each layer's prefix"
            )
        if call.layer_idx in by_layer:
            raise AdapterError(
                f"{owner}: layer_idx {call.layer_idx} of {name} calls attention more than once per forward "
                "(cross-attention or shared layers); prefix tuning supports one self-attention per layer"
            )
        by_layer[call.layer_idx] = call
    if sorted(by_layer) != list(range(len(by_layer))):
        raise AdapterError(f"{owner}: attention layer indices of {name} are {sorted(by_layer)}, expected 0..{len(by_layer) - 1}")
    shapes = {(call.key_shape[1], call.key_shape[3], call.value_shape[1], call.value_shape[3]) for call in calls}
    if len(shapes) != 1:
        raise AdapterError(
            f"{owner}: attention layers of {name} differ in key/value heads or head size {sorted(shapes)}; "
            "prefix tuning needs one key/value shape for all layers"
        )
    key_heads, key_dim, value_heads, value_dim = shapes.pop()
    if (key_heads, key_dim) != (value_heads, value_dim):
        raise AdapterError(
            f"{owner}: {name} has keys of {key_heads}x{key_dim} and values of {value_heads}x{value_dim} per token; "
            "prefix tuning needs keys and values of one shape"
        )
    modules = tuple(by_layer[index].module for index in range(len(by_layer)))
    return AttentionLayout(modules=modules, num_key_value_heads=key_heads, head_dim=key_dim)


@contextlib.contextmanager
def _implementation(model: PreTrainedModel, name: str) -> Iterator[None]:
    original = model.config._attn_implementation
    model.set_attn_implementation(name)
    try:
        yield
    finally:
        model.set_attn_implementation(original)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
