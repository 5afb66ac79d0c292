"""LoRA: low-rank adaptation of the linear layers of a frozen model (Hu et al. 2021, arXiv 2106.09685).

A targeted linear map ``y = x·Wᵀ + b`` becomes

    y = x·Wᵀ + b + s · dropout(x)·Aᵀ·Bᵀ,    A ∈ R^{r×in},  B ∈ R^{out×r},  s = α/r  (α/√r with rsLoRA)

with ``W`` frozen, ``A`` Kaiming-uniform and ``B`` zero at init, so training starts from the base model.
The layer, the init order, the scaling and the file layout follow Hugging Face PEFT, so adapters move
between the two libraries and give the same logits. GPT-2's ``Conv1D`` stores ``W`` as (in, out); its
``A``/``B`` keep the ``nn.Linear`` layout and only the merged delta is transposed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import peftlab.kernels as kernels
from peftlab.adapters import field as config_field
from peftlab.errors import AdapterError
from peftlab.methods.base import CLASSIFICATION_HEAD_NAMES, Method
from peftlab.methods.lora_shared_input import (
    FUSE_SHARED_INPUT_MODES,
    SharedInputGroup,
    attach_shared_input_groups,
    detach_shared_input_groups,
)

__all__ = ["DEFAULT_TARGET_MODULES", "AttachPlan", "LoRA", "LoRAConfig", "LoRALinear", "lora_layers", "plan_attach"]

# Hugging Face PEFT prefixes every saved key with the PeftModel -> LoraModel path to the base model.
PEFT_KEY_PREFIX = "base_model.model."
ALL_LINEAR = "all-linear"
BIAS_MODES = ("none", "all", "lora_only")
KERNELS = ("auto", "triton", "torch")
TASK_TYPES = ("CAUSAL_LM", "SEQ_CLS", "SEQ_2_SEQ_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")
LINEAR_TYPES = (nn.Linear, Conv1D)
MAX_NAMES_IN_ERROR = 8

# The modules PEFT targets when ``target_modules`` is None (its TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING).
DEFAULT_TARGET_MODULES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "opt", "gptj", "gpt_neo"),
        ("q_proj", "v_proj"),
    ),
    **dict.fromkeys(("gpt2", "gpt_bigcode"), ("c_attn",)),
    **dict.fromkeys(("bloom", "gpt_neox", "falcon"), ("query_key_value",)),
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "electra"), ("query", "value")),
    **dict.fromkeys(("t5", "mt5"), ("q", "v")),
    "bart": ("q_proj", "v_proj"),
    "phi": ("q_proj", "v_proj", "fc1", "fc2"),
}

# PEFT LoraConfig features this implementation does not have; a file where one is set cannot be loaded faithfully.
UNSUPPORTED_PEFT_FIELDS = (
    "use_dora",
    "lora_bias",
    "rank_pattern",
    "alpha_pattern",
    "layers_to_transform",
    "exclude_modules",
    "target_parameters",
    "trainable_token_indices",
    "layer_replication",
    "megatron_config",
    "alora_invocation_tokens",
    "use_qalora",
    "use_bdlora",
    "arrow_config",
    "kasa_config",
    "monteclora_config",
    "velora_config",
)
# PEFT inits that rewrite the base weights: their adapters are meaningless on the original base model.
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")


@dataclass
class LoRAConfig:
    """Hyperparameters of LoRA; field meanings follow PEFT's ``LoraConfig`` (``alpha`` is ``lora_alpha`` on disk).

    ``target_modules``: a list of module names or name suffixes (``"q_proj"`` matches ``"...self_attn.q_proj"``),
    a regex string matched against the full module name, ``"all-linear"`` (every Linear/Conv1D except the
    output head), or None for the architecture's default. ``bias`` sets which existing biases train and are
    saved. ``modules_to_save`` lists whole modules to train and save (for ``"SEQ_CLS"`` the classifier head
    is added). ``kernel`` picks the ``peftlab.kernels.lora_linear`` backend. ``fuse_shared_input`` runs
    sibling layers that read the same input (q/k/v, gate/up) as one fused call (``lora_shared_input.py``):
    ``"auto"`` where the Triton kernels run (``kernel="triton"``, or ``"auto"`` on CUDA), ``"on"`` always,
    ``"off"`` never; a runtime option, not written to ``adapter_config.json``. ``source`` names the file
    the config was read from, for error messages only.
    """

    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    target_modules: list[str] | str | None = None
    use_rslora: bool = False
    bias: str = "none"
    modules_to_save: list[str] | None = None
    task_type: str = "CAUSAL_LM"
    kernel: str = "auto"
    fuse_shared_input: str = "auto"
    source: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = self.source or "LoRAConfig"
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise AdapterError(f"{where}: field 'r' (the LoRA rank) must be a positive integer, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, int | float) or not self.alpha > 0:
            raise AdapterError(f"{where}: field 'alpha' must be a positive number, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, int | float) or not 0 <= self.dropout < 1:
            raise AdapterError(f"{where}: field 'dropout' must be a probability in [0, 1), got {self.dropout!r}")
        if not isinstance(self.use_rslora, bool):
            raise AdapterError(f"{where}: field 'use_rslora' must be true or false, got {self.use_rslora!r}")
        if self.bias not in BIAS_MODES:
            raise AdapterError(f"{where}: field 'bias' must be one of {', '.join(BIAS_MODES)}, got {self.bias!r}")
        if self.kernel not in KERNELS:
            raise AdapterError(f"{where}: field 'kernel' must be one of {', '.join(KERNELS)}, got {self.kernel!r}")
        if not isinstance(self.fuse_shared_input, str) or self.fuse_shared_input not in FUSE_SHARED_INPUT_MODES:
            raise AdapterError(
                f"{where}: field 'fuse_shared_input' must be one of {', '.join(FUSE_SHARED_INPUT_MODES)} "
                f"(a string), got {self.fuse_shared_input!r}"
            )
        if self.task_type not in TASK_TYPES:
            raise AdapterError(f"{where}: field 'task_type' must be one of {', '.join(TASK_TYPES)}, got {self.task_type!r}")
        self.target_modules = _checked_target_modules(self.target_modules, where)
        self.modules_to_save = _checked_name_list(self.modules_to_save, "modules_to_save", where)

    @property
    def scaling(self) -> float:
        """The factor on the low-rank update: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
        return self.alpha / math.sqrt(self.r) if self.use_rslora else self.alpha / self.r

    def modules_to_save_entries(self) -> list[str]:
        """``modules_to_save`` plus, for ``"SEQ_CLS"``, the classifier head names PEFT adds."""
        entries = list(self.modules_to_save or [])
        if self.task_type == "SEQ_CLS":
            entries += [name for name in CLASSIFICATION_HEAD_NAMES if name not in entries]
        return entries


def _checked_name_list(value: Any, name: str, where: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence | Set):  # lists, tuples, OmegaConf ListConfig
        raise AdapterError(f"{where}: field '{name}' must be a list of module names, got {value!r}")
    entries = list(value)
    for entry in entries:
        if not isinstance(entry, str) or not entry:
            raise AdapterError(f"{where}: field '{name}' holds {entry!r}; every entry must be a non-empty module name")
    return entries


def _checked_target_modules(value: Any, where: str) -> list[str] | str | None:
    if isinstance(value, str):
        if value.lower() == ALL_LINEAR:
            return ALL_LINEAR
        try:
            re.compile(value)
        except re.error as error:
            raise AdapterError(f"{where}: field 'target_modules' is not a valid regex ({error}): {value!r}") from None
        return value
    entries = _checked_name_list(value, "target_modules", where)
    if entries is not None and not entries:
        raise AdapterError(f"{where}: field 'target_modules' is an empty list; name at least one module")
    return entries


class LoRALinear(nn.Module):
    """An ``nn.Linear`` or GPT-2 ``Conv1D`` plus a trainable rank-``r`` update ``scaling · B·A``.

    ``base_layer`` is the original module (frozen, not copied). ``lora_A`` (r, in) and ``lora_B`` (out, r)
    are fp32 whatever the base dtype. Dropout acts on the adapter input only, in training mode only.
    ``shared_input_group``, set by ``LoRA.attach``, lets siblings that read the same input share one call.
    """

    def __init__(self, base_layer: nn.Module, r: int, scaling: float, dropout: float, kernel: str = "auto") -> None:
        super().__init__()
        if not isinstance(base_layer, LINEAR_TYPES):
            raise TypeError(f"LoRALinear wraps nn.Linear or Conv1D, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)  # weight stored (in, out)
        out_features, in_features = self.weight_out_in().shape
        self.r = r
        self.scaling = scaling
        self.dropout = dropout
        self.kernel = kernel
        self.merged = False
        self.shared_input_group: SharedInputGroup | None = None
        self.lora_A = nn.Parameter(torch.empty(r, in_features, dtype=torch.float32))
        self.lora_B = nn.Parameter(torch.empty(out_features, r, dtype=torch.float32))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """PEFT's init, bit for bit after the same seed: ``A`` Kaiming-uniform(a=√5), ``B`` zero.

        PEFT first builds ``nn.Linear(in, r)`` and ``nn.Linear(r, out)`` (each drawing its default init),
        then re-draws ``A``; it creates them on the CPU, rounds them through the base weight's dtype and
        keeps them in fp32. The same draws in the same order give the same ``A``.
        """
        weight = self.base_layer.weight
        lora_A = torch.empty_like(self.lora_A, device="cpu")
        lora_B = torch.empty_like(self.lora_B, device="cpu")
        nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5))
        nn.init.kaiming_uniform_(lora_B, a=math.sqrt(5))
        nn.init.kaiming_uniform_(lora_A, a=math.sqrt(5))
        self.lora_A.data = lora_A.to(weight.dtype).to(device=weight.device, dtype=torch.float32)
        self.lora_B.data = torch.zeros_like(lora_B, device=weight.device)

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's weight, in its own layout (code that reads ``module.weight`` keeps working)."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's bias."""
        return self.base_layer.bias

    def weight_out_in(self) -> torch.Tensor:
        """The base weight as (out, in); a transposed view for ``Conv1D``, never a copy."""
        weight = self.base_layer.weight
        return weight.t() if self.fan_in_fan_out else weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x) + scaling · dropout(x)·Aᵀ·Bᵀ``; only ``base(x)`` while merged."""
        if self.merged:
            return self.base_layer(x)
        if self.shared_input_group is not None:
            fused = self.shared_input_group.output_for(self, x)
            if fused is not None:
                return fused
        return kernels.lora_linear(
            x,
            self.weight_out_in(),
            self.base_layer.bias,
            self.lora_A,
            self.lora_B,
            self.scaling,
            self.dropout,
            self.training,
            backend=self.kernel,
        )

    def delta_weight(self) -> torch.Tensor:
        """``scaling · B·A`` in fp32, in the base weight's layout (transposed for ``Conv1D``)."""
        delta = (self.lora_B @ self.lora_A) * self.scaling
        return delta.t() if self.fan_in_fan_out else delta

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into the base weight (once; a merged layer stays as it is)."""
        if not self.merged:
            weight = self.base_layer.weight
            weight += self.delta_weight().to(weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract a merged update from the base weight again."""
        if self.merged:
            weight = self.base_layer.weight
            weight -= self.delta_weight().to(weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, dropout={self.dropout:g}, merged={self.merged}"


@dataclass(frozen=True)
class AttachPlan:
    """What ``attach`` will do to a model, worked out before anything changes."""

    targets: list[str]  # full names of the modules to wrap, in model order
    modules_to_save: list[str]  # full names of the modules to train whole
    saved_target_modules: list[str] | str  # ``target_modules`` as the adapter file records it


class LoRA(Method):
    """Injects ``LoRALinear`` layers into a model and saves/loads them in the PEFT layout."""

    peft_type: ClassVar[str] = "LORA"
    config_class: ClassVar[type] = LoRAConfig

    def __init__(self, config: LoRAConfig) -> None:
        super().__init__(config)
        self.plan: AttachPlan | None = None
        self._requires_grad_before: dict[str, bool] = {}
        self.shared_input_groups: list[SharedInputGroup] = []

    # --- attaching --------------------------------------------------------------------------------

    def attach(self, model: nn.Module) -> None:
        """Wrap the targeted modules in ``LoRALinear``, freeze the base and set up modules_to_save and biases.

        Every check runs before the model is touched; if building a layer fails half-way, the model is restored.
        """
        plan = plan_attach(model, self.config)
        self._requires_grad_before = {name: p.requires_grad for name, p in model.named_parameters()}
        self.plan = plan
        try:
            self.freeze_base(model)
            for name in plan.targets:
                base_layer = model.get_submodule(name)
                layer = LoRALinear(base_layer, self.config.r, self.config.scaling, self.config.dropout, self.config.kernel)
                _replace_module(model, name, layer)
            self._mark_trainable(model)
            self.shared_input_groups = attach_shared_input_groups(
                model, lora_layers(model), self.config.fuse_shared_input
            )
        except BaseException:
            self.detach_from(model)
            raise

    def _mark_trainable(self, model: nn.Module) -> None:
        for name in self.plan.modules_to_save:
            model.get_submodule(name).requires_grad_(True)
        if self.config.bias == "all":
            for name, parameter in model.named_parameters():
                if name == "bias" or name.endswith(".bias"):
                    parameter.requires_grad_(True)
        elif self.config.bias == "lora_only":
            for layer in lora_layers(model).values():
                if layer.base_layer.bias is not None:
                    layer.base_layer.bias.requires_grad_(True)

    def detach_from(self, model: nn.Module) -> None:
        """Put the original modules back (unmerging first) and restore every parameter's ``requires_grad``."""
        detach_shared_input_groups(self.shared_input_groups)
        self.shared_input_groups = []
        for name, layer in lora_layers(model).items():
            layer.unmerge()
            _replace_module(model, name, layer.base_layer)
        for name, parameter in model.named_parameters():
            if name in self._requires_grad_before:
                parameter.requires_grad_(self._requires_grad_before[name])
        self.plan = None

    def forward(self, model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """Run ``model``; then close every shared-input round, so no cached tensor outlives the call."""
        try:
            return model(*args, **kwargs)
        finally:
            self.release_shared_inputs()

    def generate(self, model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """``model.generate``; then close every shared-input round."""
        try:
            return model.generate(*args, **kwargs)
        finally:
            self.release_shared_inputs()

    def release_shared_inputs(self) -> None:
        """Drop the outputs any shared-input group still caches (normally none: rounds close themselves)."""
        for group in self.shared_input_groups:
            group.release()

    # --- merging ----------------------------------------------------------------------------------

    def merge(self, model: nn.Module) -> None:
        """Fold every LoRA update into its base weight; the forward then skips the adapters."""
        for layer in lora_layers(model).values():
            layer.merge()

    def unmerge(self, model: nn.Module) -> None:
        """Take merged updates out of the base weights again."""
        for layer in lora_layers(model).values():
            layer.unmerge()

    # --- adapter files ----------------------------------------------------------------------------

    def adapter_config(self, model: nn.Module) -> dict[str, Any]:
        """The PEFT ``adapter_config.json`` fields for this adapter."""
        config = self.config
        plan = self._attached_plan()
        alpha = int(config.alpha) if float(config.alpha).is_integer() else float(config.alpha)
        return {
            "peft_type": self.peft_type,
            "task_type": config.task_type,
            "r": config.r,
            "lora_alpha": alpha,
            "lora_dropout": float(config.dropout),
            "target_modules": plan.saved_target_modules,
            "use_rslora": config.use_rslora,
            "fan_in_fan_out": any(layer.fan_in_fan_out for layer in lora_layers(model).values()),
            "bias": config.bias,
            "modules_to_save": config.modules_to_save_entries() or None,
            "base_model_name_or_path": getattr(getattr(model, "config", None), "name_or_path", None) or None,
            "init_lora_weights": True,
            "inference_mode": True,
            "use_dora": False,
            "lora_bias": False,
            "layers_to_transform": None,
            "layers_pattern": None,
            "rank_pattern": {},
            "alpha_pattern": {},
        }

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The adapter tensors under PEFT's keys (``base_model.model.<path>.lora_A.weight``, ...)."""
        return {key: tensor.detach() for key, tensor in self._adapter_tensors(model).items()}

    def _adapter_tensors(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The live tensors an adapter file holds, keyed as PEFT keys them (saving reads them, loading writes them)."""
        plan = self._attached_plan()
        tensors: dict[str, torch.Tensor] = {}
        for name, layer in lora_layers(model).items():
            tensors[f"{PEFT_KEY_PREFIX}{name}.lora_A.weight"] = layer.lora_A
            tensors[f"{PEFT_KEY_PREFIX}{name}.lora_B.weight"] = layer.lora_B
            if self.config.bias == "lora_only" and layer.base_layer.bias is not None:
                tensors[f"{PEFT_KEY_PREFIX}{name}.base_layer.bias"] = layer.base_layer.bias
        if self.config.bias == "all":
            for key, tensor in model.state_dict(keep_vars=True).items():
                if key == "bias" or key.endswith(".bias"):
                    tensors[PEFT_KEY_PREFIX + key] = tensor
        for name in plan.modules_to_save:
            for key, tensor in model.get_submodule(name).state_dict(keep_vars=True).items():
                tensors[f"{PEFT_KEY_PREFIX}{name}.{key}"] = tensor
        return tensors

    def load_adapter_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
        """Check that ``state`` holds exactly this adapter's keys with the right shapes, then copy it in."""
        where = source
        own = self._adapter_tensors(model)
        state = self._without_peft_wrapper_copies(state)
        unknown = sorted(set(state) - set(own))
        if unknown:
            raise AdapterError(
                f"{where}: tensor {unknown[0]!r} has no place in this model's LoRA adapter ({len(unknown)} unknown "
                f"keys; the adapter config targets {_preview(sorted(own))})"
            )
        missing = sorted(set(own) - set(state))
        if missing:
            raise AdapterError(
                f"{where}: tensor {missing[0]!r} is missing ({len(missing)} missing); the file does not match "
                "the adapter config's target_modules / modules_to_save / bias"
            )
        for key, tensor in state.items():
            if tuple(tensor.shape) != tuple(own[key].shape):
                raise AdapterError(
                    f"{where}: tensor {key!r} has shape {tuple(tensor.shape)}, the model expects {tuple(own[key].shape)}"
                )
            if not tensor.is_floating_point():
                raise AdapterError(f"{where}: tensor {key!r} has dtype {tensor.dtype}, expected a floating-point dtype")
        with torch.no_grad():
            for key, tensor in state.items():
                own[key].copy_(tensor)

    def _without_peft_wrapper_copies(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drop the extra copies PEFT writes for a ``modules_to_save`` module when ``bias="all"``.

        PEFT's ``bias="all"`` filter also catches the bias inside its ``ModulesToSaveWrapper``
        (``<module>.original_module.bias``, ``<module>.modules_to_save.bias``); ``<module>.bias`` holds the
        trained value, so these are redundant.
        """
        if self.config.bias != "all":
            return state
        wrapper_prefixes = tuple(
            f"{PEFT_KEY_PREFIX}{name}.{part}."
            for name in self._attached_plan().modules_to_save
            for part in ("original_module", "modules_to_save")
        )
        return {key: tensor for key, tensor in state.items() if not key.startswith(wrapper_prefixes)}

    @classmethod
    def config_from_adapter_config(cls, fields: dict[str, Any], source: str) -> LoRAConfig:
        """Read a PEFT (or peftlab) LoRA ``adapter_config.json``; unsupported PEFT features are refused."""
        for name in UNSUPPORTED_PEFT_FIELDS:
            if fields.get(name):
                raise AdapterError(
                    f"{source}: field '{name}' is {fields[name]!r}; peftlab's LoRA does not support it "
                    f"(only plain LoRA adapters load)"
                )
        init = config_field(fields, "init_lora_weights", (bool, str), source, default=True)
        if isinstance(init, str) and init.lower().startswith(BASE_CHANGING_INITS):
            raise AdapterError(
                f"{source}: field 'init_lora_weights' is {init!r}; that init changes the base weights, so the adapter "
                "only fits the changed base. Save it from PEFT with path_initial_model_for_weight_conversion first"
            )
        return LoRAConfig(
            r=config_field(fields, "r", int, source, default=8),
            alpha=config_field(fields, "lora_alpha", (int, float), source, default=8),
            dropout=config_field(fields, "lora_dropout", (int, float), source, default=0.0),
            target_modules=config_field(fields, "target_modules", (list, str), source, default=None),
            use_rslora=config_field(fields, "use_rslora", bool, source, default=False),
            bias=config_field(fields, "bias", str, source, default="none"),
            modules_to_save=config_field(fields, "modules_to_save", list, source, default=None),
            task_type=config_field(fields, "task_type", str, source, default="CAUSAL_LM"),
            source=source,
        )

    def _attached_plan(self) -> AttachPlan:
        if self.plan is None:
            raise RuntimeError("this LoRA method is not attached to a model; use peftlab.apply(model, LoRAConfig(...))")
        return self.plan


# --- resolving targets -----------------------------------------------------------------------------


def plan_attach(model: nn.Module, config: LoRAConfig) -> AttachPlan:
    """Resolve ``target_modules`` and ``modules_to_save`` against ``model``; raise ``AdapterError`` on any mismatch."""
    where = config.source or "LoRAConfig"
    modules = dict(model.named_modules())
    if any(isinstance(module, LoRALinear) for module in modules.values()):
        raise AdapterError(f"{where}: the model already has LoRA layers; apply LoRA to a model without them")
    names = [name for name in modules if name]
    linear_names = [name for name in names if isinstance(modules[name], LINEAR_TYPES)]
    modules_to_save = _resolve_modules_to_save(modules, config, where)
    candidates = [name for name in names if not any(_is_within(name, kept) for kept in modules_to_save)]

    requested = config.target_modules
    if requested is None:
        requested = _default_targets(model, where)
    if requested == ALL_LINEAR:
        excluded = _output_heads(model)
        targets = [
            name
            for name in candidates
            if isinstance(modules[name], LINEAR_TYPES) and not any(_is_within(name, head) for head in excluded)
        ]
        if not targets:
            raise AdapterError(f"{where}: field 'target_modules' is 'all-linear' but the model has no Linear/Conv1D layer")
        saved = _minimal_suffixes(targets, [name for name in names if name not in set(targets)])
    elif isinstance(requested, str):
        targets = [name for name in candidates if re.fullmatch(requested, name)]
        if not targets:
            raise AdapterError(
                f"{where}: field 'target_modules' regex {requested!r} matches no full module name; "
                f"the Linear/Conv1D layers are {_preview(linear_names)}"
            )
        saved = requested
    else:
        targets = [name for name in candidates if any(_name_matches(name, entry) for entry in requested)]
        unmatched = [entry for entry in requested if not any(_name_matches(name, entry) for name in targets)]
        if unmatched:
            reserved = f" (modules under modules_to_save {modules_to_save} are not LoRA targets)" if modules_to_save else ""
            raise AdapterError(
                f"{where}: field 'target_modules' entries {unmatched} match no module{reserved}; "
                f"the Linear/Conv1D layers here are named {_preview(_leaf_names(linear_names))}"
            )
        saved = sorted(set(requested))
    for name in targets:
        module = modules[name]
        if not isinstance(module, LINEAR_TYPES):
            raise AdapterError(
                f"{where}: field 'target_modules' selects {name!r}, a {type(module).__name__}; "
                "LoRA here wraps nn.Linear and Conv1D layers only"
            )
        if not module.weight.is_floating_point():
            raise AdapterError(f"{where}: target {name!r} has a {module.weight.dtype} weight; LoRA needs a float base weight")
    return AttachPlan(targets=targets, modules_to_save=modules_to_save, saved_target_modules=saved)


def _resolve_modules_to_save(modules: dict[str, nn.Module], config: LoRAConfig, where: str) -> list[str]:
    """Full names of the modules to train whole; each entry must match a module, except the SEQ_CLS head names."""
    names = [name for name in modules if name]
    optional = CLASSIFICATION_HEAD_NAMES if config.task_type == "SEQ_CLS" else ()
    for entry in config.modules_to_save or []:
        if entry not in optional and not any(_name_matches(name, entry) for name in names):
            leaves = [name for name in names if not any(True for _ in modules[name].children())]
            raise AdapterError(
                f"{where}: field 'modules_to_save' entry {entry!r} matches no module; "
                f"module names include {_preview(_leaf_names(leaves))}"
            )
    entries = config.modules_to_save_entries()
    matched = [name for name in names if any(_name_matches(name, entry) for entry in entries)]
    # a module inside another saved module is saved with it
    return [name for name in matched if not any(_is_within(name, other) and name != other for other in matched)]


def _default_targets(model: nn.Module, where: str) -> list[str]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in DEFAULT_TARGET_MODULES:
        raise AdapterError(
            f"{where}: field 'target_modules' is None and there is no default for model type {model_type!r}; "
            f"set target_modules (a list of module names, a regex, or 'all-linear')"
        )
    return list(DEFAULT_TARGET_MODULES[model_type])


def _output_heads(model: nn.Module) -> list[str]:
    """Names of the output head modules ``all-linear`` leaves alone (``lm_head``, ``classifier``, ``score``)."""
    heads = []
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    output = get_output_embeddings() if callable(get_output_embeddings) else None
    for name, module in model.named_modules():
        if name and (module is output or name in CLASSIFICATION_HEAD_NAMES):
            heads.append(name)
    return heads


def _name_matches(name: str, entry: str) -> bool:
    """PEFT's list rule: the module name is the entry or ends with ``"." + entry``."""
    return name == entry or name.endswith("." + entry)


def _is_within(name: str, parent: str) -> bool:
    return name == parent or name.startswith(parent + ".")


def _suffixes(name: str) -> list[str]:
    """Dotted suffixes of a module name, shortest first: ``a.b.c`` -> ``c``, ``b.c``, ``a.b.c``."""
    parts = name.split(".")
    return [".".join(parts[i:]) for i in range(len(parts) - 1, -1, -1)]


def _minimal_suffixes(targets: list[str], others: list[str]) -> list[str]:
    """A short list of name suffixes that selects exactly ``targets`` under PEFT's list rule."""
    taken = {suffix for name in others for suffix in _suffixes(name)}
    chosen: list[str] = []
    for name in sorted(targets):
        if any(_name_matches(name, entry) for entry in chosen):
            continue
        chosen.append(next((s for s in _suffixes(name) if s not in taken), name))
    return sorted(chosen)


def _leaf_names(names: list[str]) -> list[str]:
    """The distinct last components of module names, in first-seen order (``q_proj``, ``k_proj``, ...)."""
    return list(dict.fromkeys(name.rsplit(".", 1)[-1] for name in names))


def _preview(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_NAMES_IN_ERROR])
    return shown + (f", ... ({len(items)} in all)" if len(items) > MAX_NAMES_IN_ERROR else "")


# --- model surgery ---------------------------------------------------------------------------------


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every ``LoRALinear`` in ``model``, keyed by module name."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child_name, new)
