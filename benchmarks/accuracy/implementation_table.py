"""peftlab's method against ``peft``'s over many seeds, and seed for seed with the same draws, as markdown.

    python benchmarks/accuracy/implementation_table.py runs/accuracy/minilm_pang_lee_seeds \
        runs/accuracy/peft_reference_pang_lee_seeds runs/accuracy/peft_reference_pang_lee_paired [--method lora]

The first folder holds ``peftlab train`` runs, the others ``peft_reference.py`` runs; those made with
``--peftlab-draws`` (``"peftlab_draws": true`` in result.json) start from peftlab's initial values, the
rest from peft's own draw. Prints one row per seed (each implementation's test accuracy, and ours minus
peft's on the same draws), then mean ± sample std, the standard error of each mean and of the difference
of the two independent means, and how many seeds reach the published anchor figure. Every figure comes
from the result files except the anchor's published accuracy (``anchor_table.ANCHOR``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anchor_table import ANCHOR, finished_runs  # a script beside this one


def by_seed(results: list[dict]) -> dict[int, float]:
    """Test accuracy by seed."""
    return {r["seed"]: r["metrics"]["task_accuracy"] for r in results}


def split_reference(results: list[dict]) -> tuple[dict[int, float], dict[int, float]]:
    """``peft_reference.py`` results by seed: those with peft's own draw, and those with peftlab's."""
    own = by_seed([r for r in results if not r.get("peftlab_draws")])
    paired = by_seed([r for r in results if r.get("peftlab_draws")])
    return own, paired


def summary(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample std and standard error of the mean."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return mean, std, std / math.sqrt(len(values))


def cell(value: float | None) -> str:
    """A three-decimal accuracy, ``—`` when the run is missing."""
    return "—" if value is None else f"{value:.3f}"


def tables(
    ours: dict[int, float], peft_own: dict[int, float], peft_paired: dict[int, float], anchor: float
) -> str:
    """The per-seed table and the summary table."""
    lines = [
        "| seed | peftlab | peft, its own draw | peft, peftlab's draw | peftlab − peft (same draw) |",
        "|---|---|---|---|---|",
    ]
    for seed in sorted(set(ours) | set(peft_own) | set(peft_paired)):
        mine, own, paired = ours.get(seed), peft_own.get(seed), peft_paired.get(seed)
        gap = "—" if mine is None or paired is None else f"{mine - paired:+.3f}"
        lines.append(f"| {seed} | {cell(mine)} | {cell(own)} | {cell(paired)} | {gap} |")
    lines += [
        "",
        f"| implementation | seeds | mean ± std | standard error | seeds at or above the anchor ({anchor:.3f}) |",
        "|---|---|---|---|---|",
    ]
    stats = {}
    for label, values in (
        ("peftlab", ours),
        ("peft, its own draw", peft_own),
        ("peft, peftlab's draw", peft_paired),
    ):
        if not values:
            continue
        mean, std, error = stats[label] = summary(list(values.values()))
        reached = sum(v >= anchor for v in values.values())
        lines.append(
            f"| {label} | {len(values)} | {mean:.3f} ± {std:.3f} | {error:.3f} | {reached} of {len(values)} |"
        )
    if "peftlab" in stats and "peft, its own draw" in stats and len(ours) > 1 and len(peft_own) > 1:
        (mine, _, mine_error), (theirs, _, theirs_error) = stats["peftlab"], stats["peft, its own draw"]
        error = math.hypot(mine_error, theirs_error)
        lines.append("")
        lines.append(
            f"peftlab − peft (independent draws): {mine - theirs:+.3f}, standard error {error:.3f} "
            f"({(mine - theirs) / error:+.1f} standard errors)."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Print the tables for one method."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("ours", type=Path)
    parser.add_argument("peft", type=Path, nargs="+")
    parser.add_argument("--method", default="lora", choices=sorted(ANCHOR))
    args = parser.parse_args()
    ours = by_seed(finished_runs(args.ours).get(args.method, []))
    reference = [r for folder in args.peft for r in finished_runs(folder).get(args.method, [])]
    peft_own, peft_paired = split_reference(reference)
    print(tables(ours, peft_own, peft_paired, ANCHOR[args.method][0]), end="")


if __name__ == "__main__":
    main()
