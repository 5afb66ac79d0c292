"""Prefix tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for Generation").

Every attention layer ``l`` attends, besides the real tokens, to ``num_virtual_tokens`` learned key and
value vectors ``prefix_keys[l], prefix_values[l]`` (each ``[num_key_value_heads, T, head_dim]``).
They are rows of one table ``P`` of shape ``[T, num_layers * 2 * kv_dim]`` (``kv_dim =
num_key_value_heads * head_dim``), laid out as Hugging Face PEFT stores it: for token ``i`` the columns
are ``[layer 0 keys, layer 0 values, layer 1 keys, ...]``, head-major within each block. ``P`` is either
learned directly, or reparameterised as in the paper's eq. (5), ``P[i] = MLP(P'[i])`` with
``MLP = Linear(kv_dim, encoder_hidden_size) -> Tanh -> Linear(encoder_hidden_size, num_layers * 2 * kv_dim)``
(PEFT's ``PrefixEncoder`` with ``prefix_projection=True``). Only ``P`` is saved, so a loaded adapter is
always the flat table; ``peftlab.load_adapter(..., trainable=True)`` keeps training it (PEFT refuses
to make a loaded prompt-learning adapter trainable).

The prefix enters at the attention call (``prefix_attention``), not through the KV cache: it works for
GQA decoders (Llama), GPT-2 and BERT, with gradient checkpointing and with ``generate()``, whose cache
holds real tokens only.

Gradient checkpointing: each layer recomputes its prefix from the parameters inside the attention call,
so checkpointed recomputation sees the same prefix. Use transformers' default non-reentrant checkpointing
(with ``use_reentrant=True`` and a frozen base, nothing entering a layer requires grad and the prefix
would get no gradient unless ``model.enable_input_require_grads()`` is called). PEFT refuses prefix
tuning with gradient checkpointing altogether.

Init (``prefix_init``): ``random`` draws ``P`` (or the MLP's input) from N(0, 1), as PEFT does. The
other two set ``P`` to the keys and values the frozen model itself computes for ``num_virtual_tokens``
real token ids (the paper's section 7.2, "initializing the prefix with activations of real words"):
``real_tokens`` draws them uniformly from the vocabulary, ``text`` takes ``tokenizer(prefix_init_text)``
(repeated to length, as prompt tuning's ``text`` init). The ids are kept in ``method.init_token_ids``.
Rotary models compute them at positions ``-T .. -1``, so that a causal model with such a prefix is, at
step 0, exactly the base model reading those tokens before its input (real tokens keep ``0 .. L-1``);
models with absolute positions compute them at ``0 .. T-1``. A random prefix is instead many times larger
than the model's own keys and values and, on a pretrained model, starts training from a far worse loss.

Positions: real tokens keep positions ``0 .. L-1``, as without the prefix. PEFT puts its prefix in the
KV cache, so real tokens there get positions ``T .. T+L-1``; passing ``position_ids=arange(T, T+L)``
to a peftlab model reproduces PEFT's outputs exactly.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from peftlab.adapters import field
from peftlab.errors import AdapterError
from peftlab.methods.base import Method
from peftlab.methods.prefix_attention import (
    AttentionLayout,
    bind,
    check_attention_implementation,
    layer_key_values,
    probe_attention_layout,
    unbind,
)
from peftlab.methods.prompt_learning import (
    LAYOUT_FIELDS,
    PROMPT_EMBEDDINGS_KEY,
    SavedModules,
    check_num_virtual_tokens,
    check_single_stack,
    config_dims,
    init_token_ids,
    modules_to_save_from_fields,
    normalize_task_type,
    read_common_fields,
    text_token_ids,
)

OWNER = "PrefixTuningConfig"
INITS = ("random", "real_tokens", "text")


@dataclass
class PrefixTuningConfig:
    """Prefix tuning: learned per-layer key/value prefixes of ``num_virtual_tokens`` positions.

    ``prefix_projection`` learns them through the MLP reparameterisation (hidden width
    ``encoder_hidden_size``, default ``kv_dim``). ``prefix_init`` is ``"random"`` (N(0, 1), as PEFT),
    ``"real_tokens"`` (the model's own keys/values of random vocabulary tokens) or ``"text"`` (of
    ``tokenizer(prefix_init_text)``; ``tokenizer`` is an object or a name/path); the last two set the flat
    table, so they exclude ``prefix_projection``. ``modules_to_save`` names base modules trained in full, in place
    (for ``task_type="SEQ_CLS"`` it defaults to the classification head, ``classifier`` or ``score``).
    ``inference_mode`` is set for adapters loaded from files: the prefix is then the flat saved table.
    """

    num_virtual_tokens: int = 20
    prefix_projection: bool = False
    encoder_hidden_size: int | None = None
    prefix_init: str = "random"
    prefix_init_text: str | None = None
    tokenizer: Any = None
    task_type: str = "CAUSAL_LM"
    modules_to_save: list[str] | None = None
    inference_mode: bool = False


class PrefixEncoder(nn.Module):
    """The prefix table ``P`` ``[T, num_layers * 2 * kv_dim]``: an embedding, optionally passed through the MLP."""

    def __init__(self, num_virtual_tokens: int, num_layers: int, kv_dim: int, projection_hidden_size: int | None) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.kv_dim = kv_dim
        width = num_layers * 2 * kv_dim
        self.transform: nn.Sequential | None = None
        if projection_hidden_size is None:
            self.embedding = nn.Embedding(num_virtual_tokens, width)
        else:
            self.embedding = nn.Embedding(num_virtual_tokens, kv_dim)
            self.transform = nn.Sequential(
                nn.Linear(kv_dim, projection_hidden_size), nn.Tanh(), nn.Linear(projection_hidden_size, width)
            )

    def table(self) -> torch.Tensor:
        """The whole table ``P`` (what is saved as ``prompt_embeddings``)."""
        if self.transform is None:
            return self.embedding.weight
        return self.transform(self.embedding.weight)

    def layer_columns(self, layer_idx: int) -> torch.Tensor:
        """Layer ``layer_idx``'s ``[T, 2 * kv_dim]`` slice of ``P`` (keys then values), computing only that slice."""
        start = 2 * layer_idx * self.kv_dim
        stop = start + 2 * self.kv_dim
        if self.transform is None:
            return self.embedding.weight[:, start:stop]
        first, activation, last = self.transform
        hidden = activation(first(self.embedding.weight))
        return F.linear(hidden, last.weight[start:stop], last.bias[start:stop])


class PrefixTuning(Method):
    """Per-layer learned key/value prefixes, added at every attention call of the model."""

    peft_type: ClassVar[str] = "PREFIX_TUNING"
    config_class: ClassVar[type] = PrefixTuningConfig

    def __init__(self, config: PrefixTuningConfig) -> None:
        super().__init__(config)
        self.prefix_encoder: PrefixEncoder | None = None
        self._layout: AttentionLayout | None = None
        self._wrapped: str | None = None
        self._saved_modules: SavedModules | None = None
        self.init_token_ids: torch.Tensor | None = None  # the token ids a prefix initialised from tokens starts from

    # --- attaching -------------------------------------------------------------------------------------

    def attach(self, model: nn.Module) -> None:
        """Check the model (probe its attention calls), create the prefix, freeze the base, route attention."""
        config = self.config
        num_virtual_tokens = check_num_virtual_tokens(config.num_virtual_tokens, OWNER)
        task_type = normalize_task_type(config.task_type, OWNER)
        hidden = config.encoder_hidden_size
        if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int) or hidden <= 0):
            raise ValueError(f"{OWNER}.encoder_hidden_size must be a positive integer or None, got {hidden!r}")
        init = _normalize_init(config.prefix_init)
        if init != "random" and config.prefix_projection and not config.inference_mode:
            raise ValueError(
                f"{OWNER}.prefix_init={init!r} sets the flat prefix table, which prefix_projection=True replaces "
                "by an MLP of a random input; use one or the other"
            )
        text_ids = None
        if init == "text" and not config.inference_mode:
            text_ids = text_token_ids(config.prefix_init_text, config.tokenizer, OWNER, "prefix_init_text", "prefix_init")
        check_single_stack(model, OWNER)
        wrapped = check_attention_implementation(model, OWNER)
        saved_modules = SavedModules(model, config.modules_to_save, task_type, OWNER)
        layout = probe_attention_layout(model, wrapped, OWNER)
        declared_layers = config_dims(model).num_layers
        if declared_layers is not None and declared_layers != layout.num_layers:
            raise AdapterError(
                f"{OWNER}: {type(model).__name__} declares {declared_layers} layers in its config but "
                f"{layout.num_layers} attention layers ran; prefix tuning needs one prefix per declared layer"
            )
        projection = None
        if config.prefix_projection and not config.inference_mode:
            projection = hidden or layout.kv_dim
        encoder = PrefixEncoder(num_virtual_tokens, layout.num_layers, layout.kv_dim, projection)
        self.prefix_encoder = encoder.to(model.device)
        if init != "random" and not config.inference_mode:  # before anything of the model changes
            self._initialise_from_tokens(model, wrapped, layout, text_ids)
        self._layout, self._wrapped, self._saved_modules = layout, wrapped, saved_modules
        saved_modules.attach(model)
        try:
            bind(layout, _WeakSource(self), model, wrapped)
        except Exception:
            self.detach_from(model)
            raise

    def _initialise_from_tokens(
        self, model: nn.Module, wrapped: str, layout: AttentionLayout, text_ids: list[int] | None
    ) -> None:
        """Set the prefix table to the model's keys/values of ``text_ids`` (repeated), or of random vocabulary ids."""
        assert self.prefix_encoder is not None
        count = self.config.num_virtual_tokens
        token_ids = init_token_ids(text_ids, count, _vocabulary_size(model), OWNER, "prefix_init_text")
        positions = torch.arange(-count, 0) if _uses_rotary_positions(model) else torch.arange(count)
        pairs = layer_key_values(model, wrapped, layout, token_ids[None].to(model.device), OWNER, positions[None].to(model.device))
        with torch.no_grad():
            self.prefix_encoder.embedding.weight.copy_(prefix_table(pairs))
        self.init_token_ids = token_ids

    def detach_from(self, model: nn.Module) -> None:
        """Restore the model's attention implementation, parameter flags and saved-module values."""
        if self._layout is not None:
            unbind(self._layout, model, self._wrapped)
        if self._saved_modules is not None:
            self._saved_modules.restore()
        self._layout = self._wrapped = self._saved_modules = None

    # --- the prefix ------------------------------------------------------------------------------------

    def layer_prefix(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer_idx``'s ``(prefix_keys, prefix_values)``, each ``[kv_heads, T, head_dim]``."""
        if self.prefix_encoder is None or self._layout is None:
            raise AdapterError("prefix tuning is not attached to a model")
        columns = self.prefix_encoder.layer_columns(layer_idx)
        layout = self._layout
        per_token = columns.view(columns.shape[0], 2, layout.num_key_value_heads, layout.head_dim)
        return per_token[:, 0].transpose(0, 1), per_token[:, 1].transpose(0, 1)

    # --- adapter files ---------------------------------------------------------------------------------

    def adapter_config(self, model: nn.Module) -> dict[str, Any]:
        """``adapter_config.json`` for PEFT: GQA models report the key/value sizes, as PEFT does."""
        layout = self._require_layout()
        assert self._saved_modules is not None
        return {
            "peft_type": self.peft_type,
            "task_type": normalize_task_type(self.config.task_type, OWNER),
            "num_virtual_tokens": self.config.num_virtual_tokens,
            "token_dim": layout.kv_dim,
            "num_layers": layout.num_layers,
            "num_attention_heads": layout.num_key_value_heads,
            "encoder_hidden_size": self.config.encoder_hidden_size or layout.kv_dim,
            "prefix_projection": bool(self.config.prefix_projection),
            "init_weights": None,
            "modules_to_save": self._saved_modules.names or None,
            "base_model_name_or_path": getattr(model.config, "name_or_path", None) or None,
            **LAYOUT_FIELDS,
        }

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``prompt_embeddings``: the projected ``[T, num_layers * 2 * kv_dim]`` table, float32; plus saved modules."""
        self._require_layout()
        assert self.prefix_encoder is not None and self._saved_modules is not None
        with torch.no_grad():
            table = self.prefix_encoder.table().detach().float()
        return {PROMPT_EMBEDDINGS_KEY: table, **self._saved_modules.state_dict()}

    def load_adapter_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
        """Load the flat table (an MLP encoder is replaced by it) and any saved modules, after checking shapes."""
        layout = self._require_layout()
        assert self.prefix_encoder is not None and self._saved_modules is not None
        if PROMPT_EMBEDDINGS_KEY not in state:
            raise AdapterError(f"{source}: tensor {PROMPT_EMBEDDINGS_KEY!r} is missing")
        table = state[PROMPT_EMBEDDINGS_KEY]
        expected = (self.config.num_virtual_tokens, layout.num_layers * 2 * layout.kv_dim)
        if tuple(table.shape) != expected:
            raise AdapterError(
                f"{source}: tensor {PROMPT_EMBEDDINGS_KEY!r} has shape {tuple(table.shape)}; this model needs {expected} "
                f"= [num_virtual_tokens, num_layers ({layout.num_layers}) * 2 * num_key_value_heads "
                f"({layout.num_key_value_heads}) * head_dim ({layout.head_dim})]"
            )
        self._saved_modules.check_state(state, source)
        if self.prefix_encoder.transform is not None:
            device = self.prefix_encoder.embedding.weight.device
            self.prefix_encoder = PrefixEncoder(expected[0], layout.num_layers, layout.kv_dim, None).to(device)
        with torch.no_grad():
            self.prefix_encoder.embedding.weight.copy_(table)
        self._saved_modules.load_state(state)

    @classmethod
    def config_from_adapter_config(cls, fields: dict[str, Any], source: str) -> PrefixTuningConfig:
        """The config of a saved adapter (always ``inference_mode``: the flat table, no MLP)."""
        num_virtual_tokens, task_type = read_common_fields(fields, source, OWNER)
        return PrefixTuningConfig(
            num_virtual_tokens=num_virtual_tokens,
            prefix_projection=field(fields, "prefix_projection", bool, source, default=False),
            encoder_hidden_size=field(fields, "encoder_hidden_size", int, source, default=None),
            task_type=task_type,
            modules_to_save=modules_to_save_from_fields(fields, source),
            inference_mode=True,
        )

    def _require_layout(self) -> AttentionLayout:
        if self._layout is None:
            raise AdapterError("prefix tuning is not attached to a model")
        return self._layout


def prefix_table(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The table ``P`` ``[T, num_layers * 2 * kv_dim]`` holding per-layer ``(keys, values)`` ``[kv_heads, T, head_dim]``."""
    blocks = []
    for keys, values in pairs:
        length = keys.shape[1]
        blocks += [keys.transpose(0, 1).reshape(length, -1), values.transpose(0, 1).reshape(length, -1)]
    return torch.cat(blocks, dim=1).float()


def _normalize_init(value: Any) -> str:
    init = value.lower() if isinstance(value, str) else value
    if init not in INITS:
        raise ValueError(f"{OWNER}.prefix_init is {value!r}; choose one of: {', '.join(INITS)}")
    return init


def _vocabulary_size(model: nn.Module) -> int:
    """How many token ids the model's input embedding takes."""
    getter = getattr(model, "get_input_embeddings", None)
    embeddings = getter() if callable(getter) else None
    size = getattr(embeddings, "num_embeddings", None) or getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(size, int) or size <= 0:
        raise AdapterError(
            f"{OWNER}: {type(model).__name__} has no input embedding nor config.vocab_size; a prefix initialised "
            "from tokens needs token ids to run, use prefix_init='random'"
        )
    return size


def _uses_rotary_positions(model: nn.Module) -> bool:
    """Whether the model encodes positions by rotating queries and keys (transformers' ``*RotaryEmbedding``),
    so that only relative positions matter and a prefix can be computed at negative positions."""
    return any(type(module).__name__.endswith("RotaryEmbedding") for module in model.modules())


class _WeakSource:
    """Hands the attention function a layer's prefix without the global binding table keeping the method alive."""

    def __init__(self, method: PrefixTuning) -> None:
        self._method = weakref.ref(method)

    def layer_prefix(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        method = self._method()
        if method is None:
            raise AdapterError(
                "the prefix-tuning method of this model was deleted while its attention still routes through it; "
                "keep the PeftLabModel (or apply prefix tuning again)"
            )
        return method.layer_prefix(layer_idx)
