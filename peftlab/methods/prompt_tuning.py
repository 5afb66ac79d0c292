"""Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning").

A soft prompt ``P`` of ``num_virtual_tokens`` (T) learned vectors in the model's input-embedding space
is prepended to the embedded input: ``inputs_embeds = [P; E(x)]``. The attention mask gains T ones in
front and causal-LM labels gain T ``-100`` (the virtual positions never count in the loss).

As in Hugging Face PEFT (so that logits match it): the training forward returns outputs for all
T + L positions (real-token logits are ``logits[:, T:]``); the prompt sits in front of any left padding;
``position_ids`` are dropped (the model numbers the T + L positions itself) and so are causal-LM
``token_type_ids``, with a warning; classification ``token_type_ids`` get T zeros in front. A
classifier that reads the first position ([CLS]) reads the first virtual token, as in PEFT.

``generate()`` injects the prompt once, at the step that fills an empty cache (every step without a
cache), and returns real token ids only.

Init (``prompt_tuning_init``): ``random`` N(0, 1); ``sample_vocab`` rows of the input-embedding matrix
at random token ids; ``text`` the embeddings of ``tokenizer(prompt_tuning_init_text)["input_ids"]``,
special tokens included, cut or repeated to T. The prompt is float32 whatever the model dtype.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from peftlab.adapters import field
from peftlab.errors import AdapterError
from peftlab.methods.base import Method
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

OWNER = "PromptTuningConfig"
INITS = ("random", "sample_vocab", "text")
IGNORE_INDEX = -100


@dataclass
class PromptTuningConfig:
    """Prompt tuning: ``num_virtual_tokens`` soft tokens prepended to the input embeddings.

    ``prompt_tuning_init`` is ``"random"``, ``"sample_vocab"`` or ``"text"`` (case-insensitive); ``"text"``
    needs ``prompt_tuning_init_text`` and ``tokenizer`` (a callable tokenizer object, or a name or local
    path for ``AutoTokenizer``). ``modules_to_save`` names base modules trained in full, in place (for
    ``task_type="SEQ_CLS"`` it defaults to the classification head). ``inference_mode`` is set for
    adapters loaded from files: the init is skipped, the saved prompt is copied in.
    """

    num_virtual_tokens: int = 20
    prompt_tuning_init: str = "random"
    prompt_tuning_init_text: str | None = None
    tokenizer: Any = None
    task_type: str = "CAUSAL_LM"
    modules_to_save: list[str] | None = None
    inference_mode: bool = False


class PromptTuning(Method):
    """A learned soft prompt ``prompt_embeddings`` ``[T, embedding_dim]`` in front of every input."""

    peft_type: ClassVar[str] = "PROMPT_TUNING"
    config_class: ClassVar[type] = PromptTuningConfig

    def __init__(self, config: PromptTuningConfig) -> None:
        super().__init__(config)
        self.prompt_embeddings: nn.Parameter | None = None
        self._saved_modules: SavedModules | None = None
        self._task_type = "CAUSAL_LM"

    @property
    def num_virtual_tokens(self) -> int:
        """T, the soft prompt's length."""
        return self.config.num_virtual_tokens

    # --- attaching -------------------------------------------------------------------------------------

    def attach(self, model: nn.Module) -> None:
        """Check the config, build the initial prompt, then freeze the base (all checks come first)."""
        config = self.config
        num_virtual_tokens = check_num_virtual_tokens(config.num_virtual_tokens, OWNER)
        task_type = normalize_task_type(config.task_type, OWNER)
        init = _normalize_init(config.prompt_tuning_init)
        check_single_stack(model, OWNER)
        word_embeddings = _word_embeddings(model)
        saved_modules = SavedModules(model, config.modules_to_save, task_type, OWNER)
        if config.inference_mode:  # the saved prompt is copied in next; no init, no RNG use
            prompt = torch.zeros(num_virtual_tokens, word_embeddings.embedding_dim)
        else:
            prompt = _initial_prompt(init, num_virtual_tokens, word_embeddings, config)
        self.prompt_embeddings = nn.Parameter(prompt.to(word_embeddings.weight.device))
        self._saved_modules, self._task_type = saved_modules, task_type
        saved_modules.attach(model)

    def detach_from(self, model: nn.Module) -> None:
        """Restore the base model's parameter flags and saved-module values."""
        if self._saved_modules is not None:
            self._saved_modules.restore()
        self._saved_modules = None

    # --- running -----------------------------------------------------------------------------------------

    def forward(
        self,
        model: nn.Module,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """``model(inputs_embeds=[P; E(input_ids)], ...)`` with the mask and labels extended; T + L outputs."""
        if _cache_in(kwargs) is not None:
            raise ValueError(
                "prompt tuning forward prepends the soft prompt to a fresh input; to continue from a cache, "
                "use generate() (it injects the prompt once)"
            )
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = _word_embeddings(model)(input_ids)
        batch = inputs_embeds.shape[0]
        self._drop_unsupported_kwargs(kwargs, batch)
        if attention_mask is not None:
            attention_mask = self._extend_mask(attention_mask)
        if labels is not None and self._task_type == "CAUSAL_LM":
            ignored = labels.new_full((batch, self.num_virtual_tokens), IGNORE_INDEX)
            labels = torch.cat([ignored, labels], dim=1)
        inputs_embeds = torch.cat([self._prompts(batch, inputs_embeds.dtype), inputs_embeds], dim=1)
        return model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    def generate(self, model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """``model.generate`` with the prompt injected into the first uncached step; returns real token ids."""
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("prompt tuning generate() takes input_ids (the prompt is prepended to their embeddings)")
        if args:
            if "input_ids" in kwargs:
                raise ValueError("pass input_ids once (positionally or by name)")
            kwargs["input_ids"] = args[0]
            args = args[1:]
        if kwargs.get("input_ids") is None:
            raise ValueError("prompt tuning generate() needs input_ids")
        original = model.__dict__.get("prepare_inputs_for_generation")
        model.prepare_inputs_for_generation = self._prepare_for_generation(model.prepare_inputs_for_generation, model)
        try:
            return model.generate(*args, **kwargs)
        finally:
            if original is None:
                del model.prepare_inputs_for_generation
            else:
                model.prepare_inputs_for_generation = original

    def _prepare_for_generation(self, prepare: Callable[..., dict[str, Any]], model: nn.Module) -> Callable[..., Any]:
        """Wrap the model's ``prepare_inputs_for_generation``: extend the mask, inject the prompt when uncached."""

        def prepare_with_prompt(*args: Any, **kwargs: Any) -> dict[str, Any]:
            inputs = prepare(*args, **kwargs)
            # The model numbers positions itself (the prompt shifts them), as in the training forward.
            inputs.pop("position_ids", None)
            if self._task_type == "CAUSAL_LM":
                inputs.pop("token_type_ids", None)
            mask = inputs.get("attention_mask")
            if mask is not None:
                if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
                    raise ValueError(
                        "prompt tuning generate() needs 2-D attention masks; static (compileable) caches build 4-D "
                        "masks without the prompt, use the default dynamic cache"
                    )
                inputs["attention_mask"] = self._extend_mask(mask)
            cache = _cache_in(inputs)
            if cache is None or cache.get_seq_length() == 0:
                input_ids = inputs.pop("input_ids")
                embeds = _word_embeddings(model)(input_ids)
                inputs["inputs_embeds"] = torch.cat([self._prompts(embeds.shape[0], embeds.dtype), embeds], dim=1)
                inputs["input_ids"] = None
            return inputs

        return prepare_with_prompt

    def _prompts(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        if self.prompt_embeddings is None:
            raise AdapterError("prompt tuning is not attached to a model")
        return self.prompt_embeddings.to(dtype).unsqueeze(0).expand(batch, -1, -1)

    def _extend_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        if attention_mask.dim() != 2:
            raise ValueError(
                f"prompt tuning takes a 2-D attention mask [batch, length], got shape {tuple(attention_mask.shape)}"
            )
        ones = attention_mask.new_ones(attention_mask.shape[0], self.num_virtual_tokens)
        return torch.cat([ones, attention_mask], dim=1)

    def _drop_unsupported_kwargs(self, kwargs: dict[str, Any], batch: int) -> None:
        if kwargs.get("position_ids") is not None:
            warnings.warn("prompt tuning ignores position_ids: the soft prompt shifts positions", stacklevel=3)
        kwargs.pop("position_ids", None)
        token_type_ids = kwargs.get("token_type_ids")
        if token_type_ids is None:
            return
        if self._task_type == "SEQ_CLS":
            zeros = token_type_ids.new_zeros(batch, self.num_virtual_tokens)
            kwargs["token_type_ids"] = torch.cat([zeros, token_type_ids], dim=1)
        else:
            warnings.warn("prompt tuning ignores token_type_ids for causal language models", stacklevel=3)
            kwargs.pop("token_type_ids")

    # --- adapter files ---------------------------------------------------------------------------------

    def adapter_config(self, model: nn.Module) -> dict[str, Any]:
        """``adapter_config.json`` in PEFT's PROMPT_TUNING layout."""
        assert self.prompt_embeddings is not None and self._saved_modules is not None, "not attached"
        dims = config_dims(model)
        init = _normalize_init(self.config.prompt_tuning_init)
        tokenizer_name = _tokenizer_name(self.config.tokenizer)
        # PEFT refuses a TEXT config without a tokenizer name, even when loading (and then never uses the init);
        # an adapter initialised from an unnamed tokenizer object is recorded as RANDOM so that PEFT loads it.
        if init == "text" and tokenizer_name is None:
            init = "random"
        return {
            "peft_type": self.peft_type,
            "task_type": self._task_type,
            "num_virtual_tokens": self.num_virtual_tokens,
            "token_dim": self.prompt_embeddings.shape[1],
            "num_layers": dims.num_layers,
            "num_attention_heads": dims.num_attention_heads,
            "prompt_tuning_init": init.upper(),
            "prompt_tuning_init_text": self.config.prompt_tuning_init_text if init == "text" else None,
            "tokenizer_name_or_path": tokenizer_name if init == "text" else None,
            "tokenizer_kwargs": None,
            "modules_to_save": self._saved_modules.names or None,
            "base_model_name_or_path": getattr(model.config, "name_or_path", None) or None,
            **LAYOUT_FIELDS,
        }

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``prompt_embeddings`` ``[T, token_dim]`` (float32) and any saved modules."""
        assert self.prompt_embeddings is not None and self._saved_modules is not None, "not attached"
        return {PROMPT_EMBEDDINGS_KEY: self.prompt_embeddings.detach().float(), **self._saved_modules.state_dict()}

    def load_adapter_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
        """Copy the saved prompt (and saved modules) in, after checking every key and shape."""
        assert self.prompt_embeddings is not None and self._saved_modules is not None, "not attached"
        if PROMPT_EMBEDDINGS_KEY not in state:
            raise AdapterError(f"{source}: tensor {PROMPT_EMBEDDINGS_KEY!r} is missing")
        prompt = state[PROMPT_EMBEDDINGS_KEY]
        if tuple(prompt.shape) != tuple(self.prompt_embeddings.shape):
            raise AdapterError(
                f"{source}: tensor {PROMPT_EMBEDDINGS_KEY!r} has shape {tuple(prompt.shape)}; this model needs "
                f"{tuple(self.prompt_embeddings.shape)} = [num_virtual_tokens, input embedding size]"
            )
        self._saved_modules.check_state(state, source)
        with torch.no_grad():
            self.prompt_embeddings.copy_(prompt)
        self._saved_modules.load_state(state)

    @classmethod
    def config_from_adapter_config(cls, fields: dict[str, Any], source: str) -> PromptTuningConfig:
        """The config of a saved adapter (``inference_mode``: the saved prompt replaces any init)."""
        num_virtual_tokens, task_type = read_common_fields(fields, source, OWNER)
        init = field(fields, "prompt_tuning_init", str, source, default="RANDOM")
        if init.lower() not in INITS:
            raise AdapterError(f"{source}: field 'prompt_tuning_init' is {init!r}; expected one of RANDOM, SAMPLE_VOCAB, TEXT")
        return PromptTuningConfig(
            num_virtual_tokens=num_virtual_tokens,
            prompt_tuning_init=init.lower(),
            prompt_tuning_init_text=field(fields, "prompt_tuning_init_text", str, source, default=None),
            tokenizer=field(fields, "tokenizer_name_or_path", str, source, default=None),
            task_type=task_type,
            modules_to_save=modules_to_save_from_fields(fields, source),
            inference_mode=True,
        )


def _cache_in(model_inputs: dict[str, Any]) -> Any:
    """The key/value cache among a model's inputs: ``cache`` since transformers 5.24, ``past_key_values`` before."""
    cache = model_inputs.get("cache")
    return cache if cache is not None else model_inputs.get("past_key_values")


def _normalize_init(value: Any) -> str:
    init = str(value).lower() if value is not None else ""
    if init not in INITS:
        raise ValueError(f"{OWNER}.prompt_tuning_init is {value!r}; choose one of: {', '.join(INITS)}")
    return init


def _word_embeddings(model: nn.Module) -> nn.Embedding:
    getter = getattr(model, "get_input_embeddings", None)
    embeddings = getter() if callable(getter) else None
    if not isinstance(embeddings, nn.Embedding):
        raise AdapterError(
            f"{OWNER}: {type(model).__name__} has no input embedding (get_input_embeddings() returned "
            f"{type(embeddings).__name__}); prompt tuning prepends vectors in that embedding space"
        )
    return embeddings


def _initial_prompt(init: str, num_virtual_tokens: int, word_embeddings: nn.Embedding, config: PromptTuningConfig) -> torch.Tensor:
    """The starting prompt, float32 ``[T, embedding_dim]``; RNG use follows PEFT's ``PromptEmbedding``."""
    text_ids = _init_text_ids(config) if init == "text" else None
    # PEFT builds the nn.Embedding (drawing N(0, 1)) before any other init, so the same seed gives the same prompt.
    prompt = nn.Embedding(num_virtual_tokens, word_embeddings.embedding_dim).weight.detach()
    if init == "random":
        return prompt
    token_ids = init_token_ids(
        text_ids, num_virtual_tokens, word_embeddings.num_embeddings, OWNER, "prompt_tuning_init_text"
    )  # sample_vocab: text_ids is None, so the ids are drawn
    with torch.no_grad():
        return word_embeddings(token_ids.to(word_embeddings.weight.device)).detach().clone().float().cpu()


def _init_text_ids(config: PromptTuningConfig) -> list[int]:
    return text_token_ids(
        config.prompt_tuning_init_text, config.tokenizer, OWNER, "prompt_tuning_init_text", "prompt_tuning_init"
    )


def _tokenizer_name(tokenizer: Any) -> str | None:
    if isinstance(tokenizer, str):
        return tokenizer or None
    name = getattr(tokenizer, "name_or_path", None)
    return name if isinstance(name, str) and name else None
