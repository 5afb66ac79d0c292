"""BIG-bench JSON tasks, read from the ``bigbench`` sdist (or an unpacked or installed copy).

Each task is ``bigbench/benchmark_tasks/<task>[/<subtask>]/task.json`` holding ``examples`` of the form
``{"input", "target_scores": {choice: score}}`` (multiple choice) and/or ``{"input", "target": str | [str]}``
(free-form). Tasks are named by their folder path: ``strategyqa``, ``arithmetic/2_digit_addition``.

The 358 MB sdist takes about 10 s to scan, so the first scan writes an index of the task names and each
task.json read is copied into a cache folder (``<cache root>/bigbench/<archive name>/``); later reads are
instant. Examples are deduplicated as BIG-bench does (identical JSON kept once), in file order.
"""

from __future__ import annotations

import difflib
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftlab.sources.archives import iter_tar_files
from peftlab.sources.assets import AssetError, cache_root, find_archive, installed_package_dir
from peftlab.sources.splits import SplitSizes, split_examples
from peftlab.sources.task import EXACT_MATCH, MULTIPLE_CHOICE, Example, PromptFormat, Task

TASKS_FOLDER = "bigbench/benchmark_tasks/"
TASK_FILE = "task.json"
PROGRAM_FILE = "task.py"
INDEX_FILE = "index.json"
DEFAULT_SPLIT = SplitSizes(train=0.8, valid=0.1, test=None)
LICENSE = "BIG-bench: Apache-2.0; some tasks inherit their source dataset's terms"


@dataclass(frozen=True)
class TaskIndex:
    """The task names a BIG-bench copy holds: JSON tasks (loadable) and programmatic ones (task.py only)."""

    json_tasks: tuple[str, ...]
    programmatic_tasks: tuple[str, ...]


def _task_name(member: str) -> tuple[str, str] | None:
    """``(task name, file kind)`` of an archive member under benchmark_tasks, or None."""
    marker = "/" + TASKS_FOLDER
    path = "/" + member.replace("\\", "/")
    if marker not in path:
        return None
    relative = path.split(marker, 1)[1]
    folder, _, file_name = relative.rpartition("/")
    if any(part in ("", ".", "..") for part in folder.split("/")):
        return None  # never a real task, and must not become a path outside the cache
    if file_name in (TASK_FILE, PROGRAM_FILE):
        return folder, file_name
    return None


def _index_from(entries: Iterable[tuple[str, str]]) -> TaskIndex:
    json_tasks, programs = set(), set()
    for name, file_name in entries:
        (json_tasks if file_name == TASK_FILE else programs).add(name)
    return TaskIndex(tuple(sorted(json_tasks)), tuple(sorted(programs - json_tasks)))


class BigBenchSource:
    """A BIG-bench copy: the sdist ``.tar.gz``, an unpacked sdist, or the installed ``bigbench`` package."""

    def __init__(self, location: str | Path | None = None, cache_dir: str | Path | None = None) -> None:
        self.location = self._locate(location)
        self.is_archive = self.location.is_file()
        default_cache = cache_root() / "bigbench" / self.location.name
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache

    @staticmethod
    def _locate(location: str | Path | None) -> Path:
        if location is not None:
            path = Path(location).expanduser()
            if not path.exists():
                raise AssetError(f"{path}: no such BIG-bench sdist or folder")
            return path
        package = installed_package_dir("bigbench")
        if package is not None and (package / "benchmark_tasks").is_dir():
            return package.parent
        return find_archive("bigbench")

    def index(self) -> TaskIndex:
        """Every task name in this copy (scans the archive once, then reads the cached index)."""
        if not self.is_archive:
            return self._folder_index()
        cached = self._read_cached_index()
        if cached is not None:
            return cached
        return self._scan_archive(wanted=set())

    def prefetch(self, names: Iterable[str]) -> None:
        """Copy the task.json of every task in ``names`` out of the archive, all in one pass."""
        if not self.is_archive:
            return
        wanted = set(names)
        index = self._read_cached_index()
        if index is None:
            index = self._scan_archive(wanted)  # the first scan indexes and extracts together
        for name in sorted(wanted):
            check_task_name(name, index)
        missing = {name for name in wanted if not self._cached_task(name).is_file()}
        if missing:
            self._scan_archive(missing)

    def read_task_json(self, name: str) -> tuple[dict[str, Any], str]:
        """The parsed task.json of task ``name`` and a description of where it came from."""
        if self.is_archive:
            self.prefetch([name])
            path = self._cached_task(name)
            source = f"{self.location}:{TASKS_FOLDER}{name}/{TASK_FILE}"
        else:
            check_task_name(name, self._folder_index())
            path = self._tasks_root() / name / TASK_FILE
            source = str(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise AssetError(f"{source}: not valid JSON ({error})") from None
        if not isinstance(data, dict):
            raise AssetError(f"{source}: expected a JSON object, got {type(data).__name__}")
        return data, source

    def _cached_task(self, name: str) -> Path:
        return self.cache_dir / "tasks" / name / TASK_FILE

    def _tasks_root(self) -> Path:
        candidates = [self.location / "bigbench" / "benchmark_tasks", self.location / "benchmark_tasks"]
        # the folder an sdist unpacks into holds bigbench-<version>/bigbench/benchmark_tasks
        candidates += sorted(self.location.glob("*/bigbench/benchmark_tasks"))
        for candidate in candidates:
            if candidate.is_dir():
                return candidate
        if self.location.name == "benchmark_tasks":
            return self.location
        raise AssetError(
            f"{self.location}: no bigbench/benchmark_tasks folder (is this an unpacked bigbench sdist?)"
        )

    def _folder_index(self) -> TaskIndex:
        root = self._tasks_root()
        entries = [
            (path.parent.relative_to(root).as_posix(), path.name)
            for pattern in (TASK_FILE, PROGRAM_FILE)
            for path in root.rglob(pattern)
        ]
        return _index_from(entries)

    def _stamp(self) -> dict[str, Any]:
        stat = self.location.stat()
        return {"archive": self.location.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def _read_cached_index(self) -> TaskIndex | None:
        path = self.cache_dir / INDEX_FILE
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if stored.get("stamp") != self._stamp():
            shutil.rmtree(self.cache_dir / "tasks", ignore_errors=True)  # extracted from an older archive
            return None
        return TaskIndex(tuple(stored["json_tasks"]), tuple(stored["programmatic_tasks"]))

    def _scan_archive(self, wanted: set[str]) -> TaskIndex:
        """One pass over the archive: index every task and copy the wanted task.json files to the cache."""
        entries = []
        for member, read in iter_tar_files(self.location):
            found = _task_name(member)
            if found is None:
                continue
            entries.append(found)
            name, file_name = found
            if file_name == TASK_FILE and name in wanted:
                target = self._cached_task(name)
                target.parent.mkdir(parents=True, exist_ok=True)
                temporary = target.with_suffix(".partial")
                temporary.write_bytes(read())
                temporary.replace(target)
        index = _index_from(entries)
        if not index.json_tasks:
            raise AssetError(
                f"{self.location}: no {TASKS_FOLDER}*/task.json inside (is this the bigbench sdist?)"
            )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "stamp": self._stamp(),
            "json_tasks": index.json_tasks,
            "programmatic_tasks": index.programmatic_tasks,
        }
        temporary = self.cache_dir / (INDEX_FILE + ".partial")
        temporary.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        temporary.replace(self.cache_dir / INDEX_FILE)
        return index


def check_task_name(name: str, index: TaskIndex) -> None:
    """Raise a clear error when ``name`` is not a loadable JSON task, listing close matches."""
    if name in index.json_tasks:
        return
    if name in index.programmatic_tasks:
        raise AssetError(
            f"BIG-bench task {name!r} is programmatic (task.py, no task.json); only JSON tasks can be read offline"
        )
    known = index.json_tasks + index.programmatic_tasks
    close = difflib.get_close_matches(name, known, n=6, cutoff=0.6)
    close += [task for task in known if name and name in task and task not in close][: 6 - len(close)]
    hint = f"close matches: {', '.join(close)}" if close else "no close matches"
    raise AssetError(
        f"no BIG-bench task {name!r}; {hint} ({len(index.json_tasks)} JSON tasks; "
        "list them with: python -m peftlab.sources tasks --bigbench)"
    )


def _target_scores(value: Any, source: str) -> dict[str, float]:
    if not isinstance(value, dict) or not value:
        raise AssetError(f"{source}: 'target_scores' must be a non-empty object of choice -> score")
    for choice, score in value.items():
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise AssetError(f"{source}: target_scores[{choice!r}] must be a number, got {score!r}")
    return value


def _targets(value: Any, source: str) -> tuple[str, ...]:
    targets = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else ()
    if not targets or not all(isinstance(target, str) for target in targets):
        raise AssetError(f"{source}: 'target' must be a string or a list of strings, got {value!r}")
    return targets


def parse_examples(data: dict[str, Any], source: str) -> list[Example]:
    """The examples of a task.json, deduplicated, in file order."""
    raw = data.get("examples")
    if not isinstance(raw, list):
        raise AssetError(f"{source}: no 'examples' list")
    seen, examples = set(), []
    for number, item in enumerate(raw, start=1):
        where = f"{source}, example {number}"
        key = json.dumps(item)
        if key in seen:
            continue
        seen.add(key)
        if not isinstance(item, dict) or not isinstance(item.get("input"), str):
            raise AssetError(f"{where}: expected an object with a string 'input'")
        if "target_scores" in item:
            scores = _target_scores(item["target_scores"], where)
            best = max(scores.values())
            if len(scores) > 1 and best <= min(scores.values()):
                raise AssetError(f"{where}: no choice scores higher than the others, so no answer is correct")
            choices = tuple(scores)
            label = next(position for position, choice in enumerate(choices) if scores[choice] == best)
            examples.append(Example(text=item["input"].strip(), label=label, choices=choices))
        elif "target" in item:
            examples.append(Example(text=item["input"].strip(), answers=_targets(item["target"], where)))
        else:
            raise AssetError(f"{where}: has neither 'target_scores' nor 'target'")
    return examples


def fixed_label_names(examples: list[Example]) -> tuple[str, ...]:
    """The shared choice set when every example has the same choices (order of the first), else ()."""
    if not examples or any(not example.choices for example in examples):
        return ()
    first = examples[0].choices
    if any(set(example.choices) != set(first) for example in examples):
        return ()
    return first


def relabel(example: Example, label_names: tuple[str, ...]) -> Example:
    """The example with its choices put in ``label_names`` order."""
    return Example(
        text=example.text,
        label=label_names.index(example.answer),
        choices=label_names,
        answers=example.answers,
    )


def prompt_format(data: dict[str, Any], scoring: str = MULTIPLE_CHOICE) -> PromptFormat:
    """The task's own prompt settings, with BIG-bench's defaults for the missing ones.

    Choices are listed in the prompt only for multiple-choice scoring: a free-form answer is generated,
    and a list holding the answer would give it away.
    """
    defaults = PromptFormat(append_choices=True)
    return PromptFormat(
        prefix=str(data.get("task_prefix", defaults.prefix)),
        input_prefix=str(data.get("example_input_prefix", defaults.input_prefix)),
        output_prefix=str(data.get("example_output_prefix", defaults.output_prefix)),
        choice_prefix=str(data.get("choice_prefix", defaults.choice_prefix)),
        append_choices=scoring == MULTIPLE_CHOICE
        and bool(data.get("append_choices_to_input", defaults.append_choices)),
    )


def task_from_json(
    name: str, data: dict[str, Any], source: str, sizes: SplitSizes = DEFAULT_SPLIT, seed: int = 0
) -> Task:
    """A ``Task`` from a parsed task.json: fixed labels when every example shares its choices."""
    examples = parse_examples(data, source)
    if not examples:
        raise AssetError(f"{source}: the 'examples' list is empty")
    label_names = fixed_label_names(examples)
    if label_names:
        examples = [relabel(example, label_names) for example in examples]
    multiple_choice = all(example.choices for example in examples)
    scoring = (
        MULTIPLE_CHOICE
        if multiple_choice and data.get("preferred_score") != "exact_str_match"
        else EXACT_MATCH
    )
    train, valid, test = split_examples(examples, sizes, seed)
    return Task(
        name=f"bigbench/{name}",
        description=str(data.get("description", "")),
        label_names=label_names,
        prompt=prompt_format(data, scoring),
        train=tuple(train),
        valid=tuple(valid),
        test=tuple(test),
        scoring=scoring,
        source=source,
        license=LICENSE,
        details={
            "seed": seed,
            "examples_after_dedup": len(examples),
            "output_regex": data.get("output_regex"),
            "canary": str(data.get("canary", "")),
        },
    )


def bigbench_task(
    name: str,
    location: str | Path | None = None,
    sizes: SplitSizes = DEFAULT_SPLIT,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> Task:
    """BIG-bench task ``name`` (e.g. ``presuppositions_as_nli``), split 80/10/10 by default."""
    source = BigBenchSource(location, cache_dir)
    data, where = source.read_task_json(name)
    if "examples" not in data:
        subtasks = [task for task in source.index().json_tasks if task.startswith(name + "/")]
        hint = f"; pick a subtask: {', '.join(subtasks)}" if subtasks else ""
        raise AssetError(f"{where}: BIG-bench task {name!r} holds no examples itself{hint}")
    return task_from_json(name, data, where, sizes, seed)
