"""Weights & Biases as an event sink: config, events, system figures and the result summary.

``open_wandb_sink`` starts a run (online when you are logged in, offline otherwise, or the mode you set)
and returns a ``WandbSink``, or None with a reason when W&B is not installed, disabled, or fails to
start: logging to W&B never stops a run, and the local files (events.jsonl, result.json) are written
either way. Offline runs land in ``<output_dir>/wandb/offline-run-*``; upload them with ``wandb sync``.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from peftlab.logging import is_finite_number

WANDB_MODES = ("auto", "online", "offline", "disabled")
DEFAULT_WANDB_HOST = "https://api.wandb.ai"
STEP_METRIC = "step"
INIT_TIMEOUT_S = 60.0


@dataclass
class WandbRunSpec:
    """What names and groups one W&B run: a sweep is one group, each run named after its overrides."""

    project: str
    name: str
    group: str | None = None
    job_type: str | None = None
    entity: str | None = None
    tags: tuple[str, ...] = ()


class WandbSink:
    """An ``EventSink`` that mirrors events into a W&B run (numbers only; ``step`` is the x axis)."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self._closed = False

    @property
    def run_dir(self) -> Path:
        """The run's local folder (``.../wandb/offline-run-*`` or ``run-*``)."""
        return Path(self.run.dir).parent

    def log(self, event: dict[str, Any]) -> None:
        """Log the numeric fields of one event, keyed ``<event kind>/<field>`` (e.g. ``train/loss``)."""
        values = event_metrics(event)
        if values:
            self.run.log(values)

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        """Put the result summary (numbers and strings, flattened with ``/``) into the run's summary."""
        values = {k: v for k, v in flatten(summary).items() if is_finite_number(v) or isinstance(v, str | bool)}
        self.run.summary.update(values)

    def close(self) -> None:
        """Finish the run (flushes the offline files); safe to call twice."""
        if not self._closed:
            self._closed = True
            self.run.finish()


def event_metrics(event: Mapping[str, Any]) -> dict[str, float]:
    """The numeric fields of an event, prefixed with its kind, plus ``step`` when the event has one."""
    kind = str(event.get("event") or event.get("type") or "").removesuffix("_step")
    skip = {"event", "type", STEP_METRIC, "time", "timestamp"}
    named = {
        (f"{kind}/{key}" if kind and "/" not in key else key): v
        for key, v in event.items()
        if key not in skip
    }
    values = {key: value for key, value in flatten(named).items() if is_finite_number(value)}
    step = event.get(STEP_METRIC)
    if values and is_finite_number(step):
        values[STEP_METRIC] = step
    return values


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}/"))
        else:
            flat[name] = value
    return flat


def has_wandb_credentials(environ: Mapping[str, str] | None = None) -> bool:
    """True when an API key is set (``WANDB_API_KEY``) or ``wandb login`` stored one in the netrc file."""
    environ = os.environ if environ is None else environ
    if environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(environ.get("WANDB_BASE_URL", DEFAULT_WANDB_HOST)).hostname or ""
    netrc_path = environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        return netrc.netrc(netrc_path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_wandb_mode(mode: str, environ: Mapping[str, str] | None = None) -> str:
    """``auto`` -> ``WANDB_MODE`` if set, else online with credentials and offline without."""
    if mode not in WANDB_MODES:
        raise ValueError(f"logger.wandb_mode is {mode!r}; choose one of {', '.join(WANDB_MODES)}")
    if mode != "auto":
        return mode
    environ = os.environ if environ is None else environ
    if environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
        return environ["WANDB_MODE"]
    return "online" if has_wandb_credentials(environ) else "offline"


def open_wandb_sink(
    spec: WandbRunSpec, mode: str, config: Mapping[str, Any], output_dir: str | Path
) -> tuple[WandbSink | None, str | None]:
    """Start a W&B run writing under ``output_dir``; ``(sink, None)``, or ``(None, reason)`` when W&B is off.

    Never raises for W&B's sake: a missing package, a disabled mode or a failing ``wandb.init`` gives
    ``None`` and a reason the caller can log.
    """
    resolved = resolve_wandb_mode(mode)
    if resolved == "disabled":
        return None, "W&B disabled (logger.wandb_mode=disabled or WANDB_MODE=disabled)"
    try:
        import wandb
    except ImportError as error:
        return None, f"W&B is not available ({error}); `pip install wandb` to log there"
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        run = wandb.init(
            project=spec.project,
            entity=spec.entity,
            group=spec.group,
            job_type=spec.job_type,
            name=spec.name,
            tags=list(spec.tags),
            config=dict(config),
            dir=str(directory),
            mode=resolved,
            reinit="finish_previous",
            settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S, silent=True),
        )
        run.define_metric(STEP_METRIC)
        run.define_metric("*", step_metric=STEP_METRIC)
    except Exception as error:  # W&B must never stop a run: any failure to start means "no W&B"
        return (
            None,
            f"W&B failed to start in {resolved} mode ({type(error).__name__}: {error}); local files only",
        )
    return WandbSink(run), None

