"""What the leaderboard's tables share: the reference rows, cell formats, the per-view record index,
the paired-test table of a view and the mixed-CPU mark."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tabulate import tabulate

from benchmark.leaderboard import index_records, paired_rows
from benchmark.records import Record
from benchmark.stats import mean_ci

BASELINE = ("action_llm", "default")
# Tasks 1 and 2 run after KARMA's semantic warm-up; this row is the warm-up alone, so that its effect is
# not credited to the tasks (not in the paper).
WARMUP = ("action_llm", "warmup")
REFERENCE = ("karma", "karma")  # "the best text-only KARMA" of the multimodal row and Table 2
VISUAL = ("karma_visual", "visual")
GENERATORS = ("karma_gen", "generators")
SCALE = 100.0  # show metrics in points, like the paper


# A row whose runs (its own and its reference's) come from more than one CPU: bf16 rounds differently
# on native AMX and on emulation, so part of such a delta may be the machine, not the losses.
MIXED_DEVICES = "§"
MIXED_NOTE = (f"`{MIXED_DEVICES}`: the row's runs and its reference's ran on more than one kind of CPU (`environment.device` "
              "in the records); bf16 arithmetic differs between them, so part of that delta may be the machine.")


def figure_link(alt: str, figure: str | Path, link_base: str | Path) -> str:
    """Markdown image of ``figure``, linked relative to the leaderboard's folder ``link_base``."""
    return f"![{alt}]({os.path.relpath(Path(figure).resolve(), Path(link_base).resolve())})"


def _processor(record: Record) -> str:
    """The CPU a run computed on: ``environment.cpu``, or for older records their device string less
    its core count ("cpu: AMD EPYC x2" -> "AMD EPYC")."""
    env = record.data.get("environment") or {}
    if env.get("cpu"):
        return str(env["cpu"])
    return re.sub(r"^cpu: | x\d+$", "", str(env.get("device") or "unknown"))


def _mark_devices(label: str, *runs: dict) -> str:
    """``label`` marked when the runs (``{seed: Record}`` dicts) span more than one device."""
    devices = {_processor(r) for seeds in runs for r in seeds.values()}
    return f"{label} {MIXED_DEVICES}" if len(devices) > 1 else label


def _fmt(values: list[float | None]) -> str:
    if any(v is None for v in values):
        return "n/a"
    mean, half = mean_ci([SCALE * v for v in values])
    return f"{mean:+.2f}" if half is None else f"{mean:+.2f} ± {half:.2f}"


def _abs(values: list[float | None]) -> str:
    if any(v is None for v in values):
        return "n/a"
    mean, half = mean_ci([SCALE * v for v in values])
    return f"{mean:.2f}" if half is None else f"{mean:.2f} ± {half:.2f}"


def _view_index(records: list[Record], suite: str, suite_version: str) -> dict:
    """(view label "dataset · mode", model, variant) -> {seed: Record}: the tables are laid out per view."""
    index, _ = index_records(records, suite, suite_version)
    return {(f"{d} · {m}", model, variant): runs for (d, m, model, variant), runs in index.items()}


def _paired_views(index: dict, views: list[tuple[str, str]], reference: tuple[str, str], labels: dict,
                  seeds: list[int], metrics: list[str], header: str, empty: str) -> list[str]:
    """Per view, the paired-test table of each labelled (model, variant) against ``reference``."""
    out, cache = [], {}
    for dataset, mode in views:
        base = (dataset, mode, *reference)
        keys = [(dataset, mode, *row) for row in labels]
        rows = paired_rows(index, keys, {key: list(seeds) for key in [base, *keys]}, [base], metrics, cache)
        rows = [[_mark_devices(labels[(r[0], r[1])], index.get((dataset, mode, r[0], r[1]), {}), index.get(base, {})),
                 *r[2:]] for r in rows]
        out += [f"### {dataset} · {mode}", "",
                tabulate(rows, headers=[header, *[f"Δ{m}" for m in metrics]], tablefmt="github",
                         disable_numparse=True) if rows else empty, ""]
    return out


def _diff(run: Record, base: Record, metric: str) -> float | None:
    a, b = run.metric(metric), base.metric(metric)
    return None if a is None or b is None else a - b


def _node(data: dict, path: str):
    for part in path.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _dig(data: dict, path: str):
    data = _node(data, path)
    return data if isinstance(data, (int, float)) and not isinstance(data, bool) else None


def _mean_cell(values: list, integer: bool = False) -> str:
    if not values or any(v is None for v in values):
        return "n/a"
    mean, half = mean_ci(values)
    if integer and len(set(values)) == 1:
        return str(int(values[0]))
    return f"{mean:.4f}" if not half else f"{mean:.4f} ± {half:.4f}"
