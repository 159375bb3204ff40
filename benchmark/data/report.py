"""Per-dataset data report: every dropped or repaired input is counted, never silently skipped.

Loaders call ``report.issue(kind, file, line, detail)`` for each bad record. In strict mode the
first issue raises ``DataError`` naming the file and line; otherwise it is counted (with the first
few examples kept) and the report is printed and saved next to the processed data.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MAX_EXAMPLES = 5  # examples kept per issue kind


class DataError(ValueError):
    """Bad input in strict mode, or input the loader cannot use at all (message says where)."""


@dataclass
class DataReport:
    dataset: str
    strict: bool = False
    counts: Counter = field(default_factory=Counter)  # issue kind -> count
    examples: dict[str, list[str]] = field(default_factory=dict)
    stats: dict[str, int | float | str] = field(default_factory=dict)  # sizes after each stage

    def issue(self, kind: str, file: str | Path = "", line: int | None = None, detail: str = "") -> None:
        where = f"{Path(file).name}:{line}" if line is not None else str(Path(file).name) if file else ""
        message = f"{kind} at {where}: {detail}" if where else f"{kind}: {detail}"
        if self.strict:
            raise DataError(f"[{self.dataset}] {message} (strict mode; rerun without strict to count and skip)")
        self.counts[kind] += 1
        kept = self.examples.setdefault(kind, [])
        if len(kept) < MAX_EXAMPLES:
            kept.append(message[:300])

    def stat(self, key: str, value) -> None:
        self.stats[key] = value

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "issues": dict(sorted(self.counts.items())),
                "examples": self.examples, "stats": self.stats}

    def format(self) -> str:
        lines = [f"data report: {self.dataset}"]
        lines += [f"  {k}: {v}" for k, v in self.stats.items()]
        if self.counts:
            lines.append("  issues (counted, not fatal):")
            lines += [f"    {k}: {v}" for k, v in sorted(self.counts.items())]
        else:
            lines.append("  issues: none")
        return "\n".join(lines)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        tmp.replace(path)
