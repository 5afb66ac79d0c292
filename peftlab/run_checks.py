"""Checks of a run's settings that need no model: a bad value fails here, naming its field, in seconds.

``prepare_run`` calls ``check_run_settings`` before it loads anything, and the Hydra apps call it before
they claim a run folder, so a bad setting given on the command line writes no ``result.json``.
"""

from __future__ import annotations

import math

from peftlab import distributed
from peftlab.fresh_head import check_init_head
from peftlab.optimizer import check_loraplus_lr_ratio
from peftlab.pooling import check_pooling
from peftlab.run_config import RunConfig


def check_run_settings(cfg: RunConfig) -> None:
    """Raise ``ValueError`` naming the first ``train.*``, ``method.*`` or ``model.*`` field that cannot run."""
    t = cfg.train
    for name, value, minimum in (
        ("batch_size", t.batch_size, 1),
        ("grad_accum", t.grad_accum, 1),
        ("keep_checkpoints", t.keep_checkpoints, 1),
        ("warmup_steps", t.warmup_steps, 0),
    ):
        if value < minimum:
            raise ValueError(f"train.{name} is {value}; it must be at least {minimum}")
    if not (math.isfinite(t.lr) and t.lr >= 0):  # 0 is allowed: it measures a model without changing it
        raise ValueError(f"train.lr is {t.lr}; it must be a finite number, 0 or more")
    check_loraplus_lr_ratio(t.loraplus_lr_ratio, cfg.method.name)
    if not t.weight_decay >= 0:
        raise ValueError(f"train.weight_decay is {t.weight_decay}; it must be at least 0")
    check_method_settings(cfg)
    check_init_head(t.init_head, t.init_from, cfg.model.task)
    check_pooling(cfg.model.pooling, cfg.model.task)
    distributed.check_strategy(t.strategy)
    if t.strategy == "fsdp" and t.precision == "fp16":
        raise ValueError("train.precision=fp16 (loss scaling) needs train.strategy none or ddp; use bf16")
    if t.max_steps <= 0 and t.epochs < 1:
        raise ValueError(
            f"train.epochs is {t.epochs} and train.max_steps is {t.max_steps}; set one of them above 0"
        )


def check_method_settings(cfg: RunConfig) -> None:
    """The method's sizes, named as the run config names them."""
    m = cfg.method
    if m.name == "lora" and m.r < 1:
        raise ValueError(f"method.r is {m.r}; the LoRA rank must be at least 1")
    if m.name in ("prompt_tuning", "prefix_tuning"):
        if m.num_virtual_tokens < 1:
            raise ValueError(f"method.num_virtual_tokens is {m.num_virtual_tokens}; it must be at least 1")
        if m.num_virtual_tokens > cfg.data.max_length:
            raise ValueError(
                f"method.num_virtual_tokens is {m.num_virtual_tokens}, more than data.max_length "
                f"({cfg.data.max_length}); use fewer virtual tokens"
            )


__all__ = ["check_method_settings", "check_run_settings"]
