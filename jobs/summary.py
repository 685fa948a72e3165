"""The table a run ends with: what went in, what came out, what was refused and why, and where to look.

Every number comes from the run's ``stats.json`` (the checked ledgers), so the console
says what the files say; only the elapsed time is measured by the caller.
"""
from __future__ import annotations

import posixpath
from typing import Any, Mapping, Sequence

from transforms.stage import human_seconds

#: Rejection reasons named per ledger; the rest are summed as "others".
TOP_REASONS = 5
#: The run's log file in its output folder (written by :class:`jobs.console.RunConsole`).
LOG_FILE = "run.log"
#: A job's reports, named in the table where a run wrote them (build's funnel report, evaluate's figures).
REPORT_FILES = ("report.html", "evaluation.json", "quality_model.json")


def human_bytes(size: float) -> str:
    """``1116160`` -> ``1.1 MB`` (decimal units, as ``du --si`` and cloud consoles show)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def top_reasons(counts: Mapping[str, int], limit: int = TOP_REASONS) -> str:
    """``{"a": 1, "b": 5}`` -> ``b 5, a 1``, the most frequent first, the tail summed as others."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    parts = [f"{reason} {count}" for reason, count in ranked[:limit]]
    others = sum(count for _, count in ranked[limit:])
    if others:
        parts.append(f"others {others}")
    return ", ".join(parts)


def _ledger_rows(name: str, ledger: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    unit = "" if name == "ledger" else f" ({name.removesuffix('_ledger')})"
    return [
        (f"inputs{unit}", str(ledger.get("inputs", 0)), ""),
        (f"written{unit}", str(ledger.get("written", 0)), ""),
        (f"rejected{unit}", str(ledger.get("rejected_total", 0)), top_reasons(ledger.get("rejected", {}))),
        (f"dead letters{unit}", str(ledger.get("dead_letters_total", 0)), top_reasons(ledger.get("dead_letters", {}))),
    ]


def summary_rows(stats: Mapping[str, Any], output: str, elapsed_s: float,
                 extra_files: Sequence[str] = ()) -> list[tuple[str, str, str]]:
    """The table's rows, (what, figure, detail): every ledger of the run, then shards, time and files."""
    # A sub-ledger nothing entered (bootstrap's annotated objects, without annotations) says nothing.
    ledgers = sorted((name for name in stats
                      if name == "ledger" or (name.endswith("_ledger") and stats[name].get("inputs"))),
                     key=lambda name: (name != "ledger", name))
    rows = [row for name in ledgers for row in _ledger_rows(name, stats[name])]
    main = stats.get("ledger", {})
    rate = main.get("inputs", 0) / elapsed_s if elapsed_s > 0 else 0.0
    shards = stats.get("shards", {})
    rows += [
        ("throughput", f"{rate:.2f}/s", "inputs per second of wall time"),
        ("output", human_bytes(shards.get("bytes", 0)),
         f"{shards.get('count', 0)} shards, {shards.get('samples', 0)} samples"),
        ("elapsed", human_seconds(elapsed_s), ""),
        ("stats", "", posixpath.join(output, "stats.json")),
    ]
    rows += [("report", "", posixpath.join(output, name)) for name in extra_files]
    rows.append(("log", "", posixpath.join(output, LOG_FILE)))
    return rows


def summary_table(stats: Mapping[str, Any], output: str, elapsed_s: float, extra_files: Sequence[str] = ()) -> str:
    """A plain-text table of :func:`summary_rows` under a title line naming the job and its dataset."""
    rows = summary_rows(stats, output, elapsed_s, extra_files)
    what_width = max(len(what) for what, _, _ in rows)
    figure_width = max(len(figure) for _, figure, _ in rows)
    title = f"{stats.get('job', 'run')} {stats.get('dataset', '')}".rstrip() + " finished"
    lines = [title, "-" * len(title)]
    lines += [f"{what:<{what_width}}  {figure:>{figure_width}}  {detail}".rstrip() for what, figure, detail in rows]
    return "\n".join(lines)
