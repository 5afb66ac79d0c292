"""Task names -> loaders: the sentiment and topic sets, and ``bigbench/<task>`` for any BIG-bench JSON task."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

from peftlab.sources.assets import AssetError
from peftlab.sources.bigbench import bigbench_task
from peftlab.sources.sentiment import pang_lee_reviews_task, pang_lee_task, vader_movies_task
from peftlab.sources.splits import SplitSizes
from peftlab.sources.task import Task
from peftlab.sources.topics import bbc_news_task

BIGBENCH_PREFIX = "bigbench/"
NAMED_TASKS: dict[str, Callable[..., Task]] = {
    "pang_lee": pang_lee_task,
    "pang_lee_reviews": pang_lee_reviews_task,
    "vader_movies": vader_movies_task,
    "bbc_news": bbc_news_task,
}
# BIG-bench tasks the accuracy experiment uses: 3-way NLI, yes/no QA, plausibility, free-form arithmetic.
SUGGESTED_BIGBENCH = (
    "presuppositions_as_nli",
    "strategyqa",
    "sports_understanding",
    "arithmetic/2_digit_addition",
)


def task_names() -> list[str]:
    """The named tasks and the suggested BIG-bench ones (any ``bigbench/<task>`` also works)."""
    return [*NAMED_TASKS, *(BIGBENCH_PREFIX + name for name in SUGGESTED_BIGBENCH)]


def load_task(
    name: str,
    seed: int = 0,
    sizes: SplitSizes | None = None,
    archive: str | Path | None = None,
) -> Task:
    """Load task ``name`` with its deterministic split.

    ``sizes`` overrides the task's default split sizes and ``archive`` the archive (or folder) it is read from.
    """
    options = {"seed": seed, **({"sizes": sizes} if sizes is not None else {})}
    if name.startswith(BIGBENCH_PREFIX):
        return bigbench_task(name[len(BIGBENCH_PREFIX) :], location=archive, **options)
    if name in NAMED_TASKS:
        return NAMED_TASKS[name](archive=archive, **options)
    close = difflib.get_close_matches(name, task_names(), n=4, cutoff=0.5)
    hint = f"close matches: {', '.join(close)}; " if close else ""
    raise AssetError(
        f"unknown task {name!r}; {hint}tasks: {', '.join(NAMED_TASKS)}, or bigbench/<task> "
        f"(e.g. {BIGBENCH_PREFIX}{SUGGESTED_BIGBENCH[0]})"
    )
