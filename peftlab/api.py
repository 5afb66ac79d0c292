"""The public entry points: ``apply`` a method to a model, ``load_adapter`` from a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from peftlab.adapters import CONFIG_NAME, WEIGHTS_NAME, read_adapter_config, read_adapter_tensors
from peftlab.fresh_head import with_fresh_head
from peftlab.methods import FullFinetune, method_for_config, method_for_peft_type
from peftlab.methods.base import PeftLabModel
from peftlab.safety import check_sizes_match_tensors


def apply(model: nn.Module, config: Any) -> PeftLabModel:
    """Apply the method described by ``config`` to ``model`` and return the wrapped model.

    The base model's weights are frozen (except for full fine-tuning) and never copied. If the
    config does not fit the model, nothing is changed and a clear error is raised.
    """
    if isinstance(model, PeftLabModel):
        raise TypeError("model already has a method applied; apply() takes a plain transformers model")
    method = method_for_config(config)(config)
    method.attach(model)
    return PeftLabModel(model, method)


def load_adapter(
    model: nn.Module, directory: str | Path, trainable: bool = False, fresh_head: bool = False
) -> PeftLabModel:
    """Load an adapter saved by peftlab or by Hugging Face PEFT onto ``model``.

    With ``trainable=False`` the adapter's parameters are frozen (inference); with ``True`` training
    continues from the saved values. With ``fresh_head=True`` the saved classification head is left
    out and ``model``'s own head (any number of labels) is kept. Files are validated before the model
    is touched.
    """
    directory = Path(directory)
    fields = read_adapter_config(directory)
    source = str(directory / CONFIG_NAME)
    method_class = method_for_peft_type(str(fields["peft_type"]), source)
    config = method_class.config_from_adapter_config(fields, source)
    method = method_class(config)
    if isinstance(method, FullFinetune):
        state = method.read_weights(directory)
        weights_source = str(directory)
    else:
        state = read_adapter_tensors(directory)
        weights_source = str(directory / WEIGHTS_NAME)
        check_sizes_match_tensors(fields, state, source)  # what attach allocates is bounded by the file
    # Validate the files against a model that has not been changed yet, then attach and copy.
    method.attach(model)
    try:
        if fresh_head:
            state = with_fresh_head(state, method.adapter_state_dict(model), weights_source)
        method.load_adapter_state_dict(model, state, weights_source)
    except Exception:
        method.detach_from(model)
        raise
    wrapped = PeftLabModel(model, method)
    if not trainable:
        for parameter in wrapped.parameters():
            parameter.requires_grad_(False)
    return wrapped

