"""The funnel report of a build: what the filters kept and dropped, as a static page.

``counterfactory build`` publishes ``report.html`` + ``report.json`` + PNG plots + JPEG
thumbnails next to the versioned training shards. The report is *static and
self-contained*: relative links only, inline CSS, no JavaScript, no network, so a QA
reviewer can open it from a bucket or a tarball with no package installed, and a script
can read the same numbers from ``report.json``.

This module is a pure renderer: :func:`render_report` takes a :class:`ReportData` and
returns ``{relative path: bytes}``; publishing (atomically, next to the shards) is the
caller's job. Plots use matplotlib's object API (``Figure`` + ``FigureCanvasAgg``), never
``pyplot``, because the renderer runs inside Beam workers and threads where pyplot's
global figure registry and backend switching are not safe.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import re
from typing import Any, Mapping, Optional, Sequence

import jinja2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

logger = logging.getLogger(__name__)

__all__ = ["FunnelStep", "ScoreSummary", "Thumbnail", "ReportData", "render_report", "plot_sweep"]

#: Which side of a threshold passes.
HIGHER = "higher"
LOWER = "lower"
#: Which side of the threshold a thumbnail illustrates.
PASS = "pass"
FAIL = "fail"

HISTOGRAM_BINS = 40
_DPI = 100
_WIDTH_IN = 7.0
_HEIGHT_IN = 3.5
_STAGE_COLOURS = {"bootstrap": "#4C72B0", "build": "#DD8452"}
_OTHER_COLOURS = ("#55A868", "#8172B3", "#937860", "#DA8BC3")
_ALL_COLOUR = "#4C72B0"
_CHOSEN_COLOUR = "#DD8452"
_THRESHOLD_COLOUR = "#C44E52"
# Without this, matplotlib writes its version into every PNG and identical data gives different bytes.
_PNG_METADATA = {"Software": None}


@dataclasses.dataclass(frozen=True)
class FunnelStep:
    """One count of the ObjectDrop-style funnel ("14M -> 700K -> 350K")."""

    stage: str  # "bootstrap" or "build"
    step: str  # e.g. "images_in", "objects_written", "candidate_objects", "passed_thresholds", "pairs_written"
    count: int

    def __post_init__(self) -> None:
        if int(self.count) < 0:
            raise ValueError(f"funnel step {self.stage}/{self.step}: count must be >= 0, got {self.count}")


@dataclasses.dataclass(frozen=True)
class ScoreSummary:
    """All candidates' values of one score, and those of the candidates that were chosen.

    ``values`` and ``chosen`` are coerced to 1-D float64 arrays so callers may pass lists.
    """

    name: str  # e.g. "ssim_outside"
    better: str  # "higher" or "lower": which side of the threshold passes
    threshold: Optional[float]  # None = no threshold on this score
    values: np.ndarray  # float64, the score of EVERY candidate
    chosen: np.ndarray  # float64, the score of the candidate chosen for each written pair

    def __post_init__(self) -> None:
        if self.better not in (HIGHER, LOWER):
            raise ValueError(f"score {self.name!r}: better must be {HIGHER!r} or {LOWER!r}, got {self.better!r}")
        if self.threshold is not None and not math.isfinite(float(self.threshold)):
            raise ValueError(f"score {self.name!r}: threshold must be finite or None, got {self.threshold!r}")
        object.__setattr__(self, "values", np.asarray(self.values, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "chosen", np.asarray(self.chosen, dtype=np.float64).reshape(-1))


@dataclasses.dataclass(frozen=True)
class Thumbnail:
    """A candidate next to a threshold, so a reviewer can see what the threshold means."""

    score: str  # which score's threshold it illustrates
    side: str  # "pass" (just on the passing side of the threshold) or "fail" (just on the failing side)
    key: str  # candidate key
    value: float  # its score
    jpeg: bytes  # a ready-made JPEG picture (source crop | removed crop)

    def __post_init__(self) -> None:
        if self.side not in (PASS, FAIL):
            raise ValueError(f"thumbnail {self.key!r}: side must be {PASS!r} or {FAIL!r}, got {self.side!r}")


@dataclasses.dataclass(frozen=True)
class ReportData:
    """Everything the report shows; gathered by the build job, rendered here."""

    title: str  # e.g. "counterfactory-demo v1"
    created_at: str  # ISO time string, shown in the page
    funnel: Sequence[FunnelStep]  # in order; bootstrap steps first, then build steps
    rejections: Mapping[str, int]  # build's rejection counts by stable reason code
    scores: Sequence[ScoreSummary]
    thumbnails: Sequence[Thumbnail]
    ledger: Mapping[str, Any]  # stats.json ledger dict: inputs, written, rejected{}, dead_letters{}, closed
    summary: Mapping[str, Any]  # flat-ish facts shown in a table


# ---------------------------------------------------------------------------------------------
# Small helpers


def _slug(name: str) -> str:
    """A file-name-safe form of a score name (names are identifiers in practice; be safe anyway)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    return slug or "score"


def _jsonable(value: Any) -> Any:
    """Plain JSON types, with NaN/inf as None, so ``json.dumps(allow_nan=False)`` never fails."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [_jsonable(v) for v in items]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)


def _compact_json(value: Any) -> str:
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _display(value: Any) -> str:
    """How a summary value is shown in the HTML table: strings as is, the rest as compact JSON."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return _compact_json(value)


def _fmt_threshold(value: float) -> str:
    return f"{value:.4g}"


def _threshold_label(better: str, threshold: float) -> str:
    """``min 0.95`` when higher passes, ``max 0.3`` when lower passes."""
    return f"{'min' if better == HIGHER else 'max'} {_fmt_threshold(threshold)}"


def _fmt_pct(percent: Optional[float]) -> str:
    if percent is None:
        return "n/a"
    if percent == 0 or percent >= 0.1:
        return f"{percent:.1f}%"
    return f"{percent:.2g}%"


def _compact_count(n: float) -> str:
    """14000000 -> 14M, 700000 -> 700K: the axis style of the ObjectDrop funnel."""
    n = float(n)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.0f}" if n == int(n) else f"{n:.2g}"


def _pass_mask(values: np.ndarray, better: str, threshold: float) -> np.ndarray:
    """Inclusive on the threshold: ``>=`` for higher-is-better, ``<=`` for lower-is-better."""
    return values >= threshold if better == HIGHER else values <= threshold


def _pass_share(values: np.ndarray, better: str, threshold: Optional[float]) -> Optional[float]:
    if threshold is None or values.size == 0:
        return None
    return float(np.count_nonzero(_pass_mask(values, better, float(threshold)))) / float(values.size)


def _finite(values: np.ndarray, what: str) -> np.ndarray:
    finite = values[np.isfinite(values)]
    if finite.size != values.size:
        logger.warning("%s: dropped %d non-finite values", what, values.size - finite.size)
    return finite


def _histogram_edges(values: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """40 bins over the data range; a padded range when all values are equal (or nearly)."""
    data = np.concatenate([values, chosen])
    lo, hi = float(data.min()), float(data.max())
    if hi - lo <= max(abs(lo), abs(hi), 1.0) * 1e-12:
        pad = max(abs(lo) * 0.01, 0.01)
        lo, hi = lo - pad, hi + pad
    return np.linspace(lo, hi, HISTOGRAM_BINS + 1)


def _new_figure(height_in: float = _HEIGHT_IN, width_in: float = _WIDTH_IN) -> Figure:
    figure = Figure(figsize=(width_in, height_in), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, metadata=_PNG_METADATA)
    return buffer.getvalue()


def _placeholder_png(text: str) -> bytes:
    figure = _new_figure(height_in=1.2)
    figure.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, color="#555555")
    return _png(figure)


# ---------------------------------------------------------------------------------------------
# Plots


def _stage_colour(stage: str, seen: list[str]) -> str:
    if stage in _STAGE_COLOURS:
        return _STAGE_COLOURS[stage]
    others = [s for s in seen if s not in _STAGE_COLOURS]
    return _OTHER_COLOURS[others.index(stage) % len(_OTHER_COLOURS)]


def _funnel_rows(funnel: Sequence[FunnelStep]) -> list[dict[str, Any]]:
    """Each step with its share of the first step of its own stage (None when that is 0)."""
    first: dict[str, int] = {}
    rows = []
    for step in funnel:
        count = int(step.count)
        base = first.setdefault(step.stage, count)
        rows.append({
            "stage": step.stage,
            "step": step.step,
            "count": count,
            "percent_of_stage_first": (100.0 * count / base) if base > 0 else None,
        })
    return rows


def _plot_funnel(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Horizontal bars top to bottom in funnel order; colour = stage; count and % on each bar."""
    if not rows:
        return _placeholder_png("no funnel steps recorded")
    n = len(rows)
    figure = _new_figure(height_in=max(2.2, 0.42 * n + 1.0))
    ax = figure.add_subplot()
    stages: list[str] = []
    for row in rows:
        if row["stage"] not in stages:
            stages.append(row["stage"])
    colours = [_stage_colour(row["stage"], stages) for row in rows]
    counts = [row["count"] for row in rows]
    top = max(max(counts), 1)
    positions = list(range(n))
    ax.barh(positions, counts, color=colours, height=0.7)
    for pos, row in zip(positions, rows):
        label = f"{row['count']:,} · {_fmt_pct(row['percent_of_stage_first'])}"
        if row["count"] >= 0.5 * top:  # long bar: write inside, in white
            ax.text(row["count"] - 0.01 * top, pos, label, ha="right", va="center", fontsize=9, color="white",
                    fontweight="bold")
        else:
            ax.text(row["count"] + 0.01 * top, pos, label, ha="left", va="center", fontsize=9, color="#222222")
    for pos in range(1, n):  # a rule between stages makes the grouping visible without colour too
        if rows[pos]["stage"] != rows[pos - 1]["stage"]:
            ax.axhline(pos - 0.5, color="#888888", linewidth=0.8, linestyle="--")
    ax.set_yticks(positions, [row["step"] for row in rows], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.02)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: _compact_count(x)))
    ax.xaxis.set_major_locator(MaxNLocator(6, integer=True))
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    handles = [_legend_patch(_stage_colour(stage, stages), stage) for stage in stages]
    # Outside the axes: inside, it would cover the count of a long bar at the bottom.
    figure.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False, title="stage",
                  title_fontsize=8)
    ax.set_title("Funnel (% of the first step of each stage)", fontsize=10)
    return _png(figure)


def _legend_patch(colour: str, label: str) -> Patch:
    return Patch(facecolor=colour, label=label)


def _rejection_rows(rejections: Mapping[str, int]) -> list[dict[str, Any]]:
    """Sorted by count descending, then reason code, with each reason's share of all rejections."""
    items = sorted(((str(k), int(v)) for k, v in rejections.items()), key=lambda kv: (-kv[1], kv[0]))
    total = sum(v for _, v in items)
    return [
        {"reason": reason, "count": count, "percent": (100.0 * count / total) if total else None}
        for reason, count in items
    ]


def _plot_reasons(rows: Sequence[Mapping[str, Any]]) -> bytes:
    rows = [row for row in rows if row["count"] > 0]
    n = len(rows)
    figure = _new_figure(height_in=max(1.8, 0.32 * n + 1.0))
    ax = figure.add_subplot()
    positions = list(range(n))
    counts = [row["count"] for row in rows]
    top = max(counts)
    ax.barh(positions, counts, color=_THRESHOLD_COLOUR, height=0.65)
    for pos, count in zip(positions, counts):
        ax.text(count + 0.01 * top, pos, f"{count:,}", ha="left", va="center", fontsize=8, color="#222222")
    ax.set_yticks(positions, [row["reason"] for row in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.15)
    ax.xaxis.set_major_locator(MaxNLocator(6, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: _compact_count(x)))
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"Build rejections by reason ({sum(counts):,} in all)", fontsize=10)
    return _png(figure)


def _plot_score(summary: ScoreSummary, values: np.ndarray, chosen: np.ndarray, edges: np.ndarray,
                pass_share: Optional[float]) -> bytes:
    """All candidates (filled) and chosen (outline), each as its own share per bin, so a
    handful of chosen pairs stays visible next to thousands of candidates."""
    figure = _new_figure()
    ax = figure.add_subplot()
    ax.hist(values, bins=edges, weights=np.full(values.size, 1.0 / values.size), color=_ALL_COLOUR, alpha=0.55,
            label=f"all candidates (n={values.size:,})")
    if chosen.size:
        ax.hist(chosen, bins=edges, weights=np.full(chosen.size, 1.0 / chosen.size), histtype="step",
                color=_CHOSEN_COLOUR, linewidth=2.0, label=f"chosen (n={chosen.size:,})")
    lo, hi = float(edges[0]), float(edges[-1])
    if summary.threshold is not None:
        threshold = float(summary.threshold)
        lo, hi = min(lo, threshold), max(hi, threshold)
        margin = 0.02 * (hi - lo)
        lo, hi = lo - margin, hi + margin
        if summary.better == HIGHER:
            ax.axvspan(lo, threshold, color=_THRESHOLD_COLOUR, alpha=0.07, linewidth=0)
        else:
            ax.axvspan(threshold, hi, color=_THRESHOLD_COLOUR, alpha=0.07, linewidth=0)
        ax.axvline(threshold, color=_THRESHOLD_COLOUR, linestyle="--", linewidth=1.5,
                   label=_threshold_label(summary.better, threshold))
        title = f"{summary.name}: {pass_share:.1%} of {values.size:,} candidates pass"
    else:
        title = f"{summary.name}: {values.size:,} candidates (no threshold)"
    ax.set_xlim(lo, hi)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(f"{summary.name} ({summary.better} is better)", fontsize=9)
    ax.set_ylabel("share of group per bin", fontsize=9)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
    ax.xaxis.set_major_locator(MaxNLocator(7))
    ax.ticklabel_format(axis="x", useOffset=False, style="plain")
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.legend(fontsize=8, loc="best")
    return _png(figure)


def plot_sweep(score: str, better: str, values: Sequence[float], candidate_pass_rate: Sequence[float],
               object_pass_rate: Sequence[float], current: Optional[float]) -> bytes:
    """PNG of a threshold sweep: pass rates (0..1) against threshold value, a vertical line at
    the current threshold, so choosing a new threshold does not need a re-run to preview."""
    if better not in (HIGHER, LOWER):
        raise ValueError(f"better must be {HIGHER!r} or {LOWER!r}, got {better!r}")
    xs = np.asarray(values, dtype=np.float64).reshape(-1)
    candidates = np.asarray(candidate_pass_rate, dtype=np.float64).reshape(-1)
    objects = np.asarray(object_pass_rate, dtype=np.float64).reshape(-1)
    if not (xs.size == candidates.size == objects.size):
        raise ValueError(f"sweep of {score!r}: {xs.size} thresholds but {candidates.size} candidate and "
                         f"{objects.size} object pass rates")
    if xs.size == 0:
        return _placeholder_png(f"{score}: no sweep points")
    order = np.argsort(xs, kind="stable")
    xs, candidates, objects = xs[order], candidates[order], objects[order]
    figure = _new_figure()
    ax = figure.add_subplot()
    marker = "o" if xs.size <= 30 else None
    ax.plot(xs, candidates, color=_ALL_COLOUR, marker=marker, markersize=3, linewidth=1.6,
            label="candidates passing")
    ax.plot(xs, objects, color=_CHOSEN_COLOUR, marker=marker, markersize=3, linewidth=1.6,
            label="objects with ≥1 passing candidate")
    if current is not None and math.isfinite(float(current)):
        current = float(current)
        ax.axvline(current, color=_THRESHOLD_COLOUR, linestyle="--", linewidth=1.5,
                   label=f"current: {_threshold_label(better, current)}")
        lo, hi = min(float(xs[0]), current), max(float(xs[-1]), current)
    else:
        lo, hi = float(xs[0]), float(xs[-1])
    if hi - lo <= max(abs(lo), abs(hi), 1.0) * 1e-12:
        pad = max(abs(lo) * 0.01, 0.01)
    else:
        pad = 0.02 * (hi - lo)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(-0.02, 1.02)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
    ax.xaxis.set_major_locator(MaxNLocator(7))
    ax.ticklabel_format(axis="x", useOffset=False, style="plain")
    ax.tick_params(labelsize=8)
    ax.grid(color="#e5e5e5", linewidth=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    side = "at least" if better == HIGHER else "at most"
    ax.set_title(f"{score}: pass rate if the threshold were x ({side} x passes)", fontsize=10)
    ax.set_xlabel(f"{score} threshold", fontsize=9)
    ax.set_ylabel("pass rate", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    return _png(figure)


# ---------------------------------------------------------------------------------------------
# Ledger


def _ledger_view(ledger: Mapping[str, Any]) -> dict[str, Any]:
    """Totals of the stats.json ledger and whether it closes: by its own flag AND by arithmetic,
    so a stale or hand-edited ``closed`` cannot hide a lost record."""
    def breakdown(key: str) -> dict[str, int]:
        value = ledger.get(key) or {}
        if not isinstance(value, Mapping):
            return {"": int(value)}
        return {str(k): int(v) for k, v in sorted(value.items())}

    rejected, dead = breakdown("rejected"), breakdown("dead_letters")
    inputs, written = ledger.get("inputs"), ledger.get("written")
    problems = []
    if inputs is None or written is None:
        problems.append("the ledger is missing inputs or written")
        accounted = None
    else:
        accounted = int(written) + sum(rejected.values()) + sum(dead.values())
        if int(inputs) != accounted:
            problems.append(f"{int(inputs):,} inputs ≠ {accounted:,} written + rejected + dead letters")
    if ledger.get("closed") is False:
        problems.append("stats.json marks the ledger as not closed")
    return {
        "inputs": inputs,
        "written": written,
        "rejected": rejected,
        "rejected_total": sum(rejected.values()),
        "dead_letters": dead,
        "dead_letters_total": sum(dead.values()),
        "accounted": accounted,
        "closes": not problems,
        "problems": problems,
    }


# ---------------------------------------------------------------------------------------------
# Rendering

#: The page's Jinja template ships as package data beside this module.
_ENV = jinja2.Environment(loader=jinja2.PackageLoader("review", "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
_ENV.globals.update(
    fmt_int=lambda n: "—" if n is None else f"{int(n):,}",
    fmt_pct=_fmt_pct,
    fmt_num=lambda x: "—" if x is None else f"{float(x):.4g}",
)
_PAGE = _ENV.get_template("report.html.j2")

_ROW_LABELS = {PASS: "just passing", FAIL: "just failing"}


def _score_entry(summary: ScoreSummary, slug: str) -> tuple[dict[str, Any], Optional[bytes]]:
    """The JSON facts of one score and its histogram PNG (None when it has no values)."""
    values = _finite(summary.values, f"score {summary.name} values")
    chosen = _finite(summary.chosen, f"score {summary.name} chosen")
    threshold = None if summary.threshold is None else float(summary.threshold)
    pass_share = _pass_share(values, summary.better, threshold)
    entry: dict[str, Any] = {
        "name": summary.name,
        "better": summary.better,
        "threshold": threshold,
        "count": int(values.size),
        "chosen_count": int(chosen.size),
        "pass_share": pass_share,
        "chosen_pass_share": _pass_share(chosen, summary.better, threshold),
        "min": float(values.min()) if values.size else None,
        "median": float(np.median(values)) if values.size else None,
        "max": float(values.max()) if values.size else None,
        "histogram": {"edges": [], "counts": [], "chosen_counts": []},
        "file": None,
    }
    if not values.size:
        return entry, None
    edges = _histogram_edges(values, chosen)
    entry["histogram"] = {
        "edges": edges.tolist(),
        "counts": np.histogram(values, bins=edges)[0].tolist(),
        "chosen_counts": np.histogram(chosen, bins=edges)[0].tolist(),
    }
    entry["file"] = f"report/score_{slug}.png"
    return entry, _plot_score(summary, values, chosen, edges, pass_share)


def render_report(data: ReportData) -> dict[str, bytes]:
    """Render the whole report; returns ``{relative path: bytes}`` for the caller to publish.

    Paths: ``report.html``, ``report.json``, ``report/funnel.png``, ``report/reasons.png``
    (only with rejections), ``report/score_<name>.png`` per score with values and
    ``report/thumbs/<score>_<side>_<nn>.jpg`` per thumbnail.
    """
    names = [s.name for s in data.scores]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate score names in report: {names}")
    files: dict[str, bytes] = {}

    funnel = _funnel_rows(data.funnel)
    files["report/funnel.png"] = _plot_funnel(funnel)

    rejections = _rejection_rows(data.rejections)
    reasons_png = None
    if any(row["count"] > 0 for row in rejections):
        reasons_png = "report/reasons.png"
        files[reasons_png] = _plot_reasons(rejections)

    slugs: dict[str, str] = {}
    for name in names:
        slug, n = _slug(name), 1
        while slug in slugs.values():
            n += 1
            slug = f"{_slug(name)}-{n}"
        slugs[name] = slug
    # Thumbnails of a score that has no summary still get a (unique) file-name prefix.
    for thumb in data.thumbnails:
        if thumb.score not in slugs:
            slug, n = _slug(thumb.score), 1
            while slug in slugs.values():
                n += 1
                slug = f"{_slug(thumb.score)}-{n}"
            slugs[thumb.score] = slug

    thumbs_json = []
    index: dict[tuple[str, str], int] = {}
    for thumb in data.thumbnails:
        nn = index.get((thumb.score, thumb.side), 0)
        index[(thumb.score, thumb.side)] = nn + 1
        path = f"report/thumbs/{slugs[thumb.score]}_{thumb.side}_{nn:02d}.jpg"
        files[path] = bytes(thumb.jpeg)
        thumbs_json.append({"score": thumb.score, "side": thumb.side, "key": thumb.key,
                            "value": _jsonable(float(thumb.value)), "file": path})

    scores_json, scores_view = [], []
    for summary in data.scores:
        entry, png = _score_entry(summary, slugs[summary.name])
        if png is not None:
            files[entry["file"]] = png
        scores_json.append(entry)
        rows = []
        for side in (PASS, FAIL):
            thumbs = [t for t in thumbs_json if t["score"] == summary.name and t["side"] == side]
            if thumbs:
                rows.append({"side": side, "label": _ROW_LABELS[side], "thumbs": thumbs})
        scores_view.append({
            **entry,
            "slug": slugs[summary.name],
            "threshold_label": None if entry["threshold"] is None
            else _threshold_label(summary.better, entry["threshold"]),
            "pass_percent": None if entry["pass_share"] is None else 100.0 * entry["pass_share"],
            "thumb_rows": rows,
        })
    known = set(names)
    orphans = [t for t in thumbs_json if t["score"] not in known]

    ledger = _ledger_view(data.ledger)
    report_json = {
        "title": data.title,
        "created_at": data.created_at,
        "funnel": funnel,
        "rejections": {row["reason"]: row["count"] for row in rejections},
        "ledger": data.ledger,
        "ledger_closes": ledger["closes"],
        "summary": data.summary,
        "scores": scores_json,
        "thumbnails": thumbs_json,
        "plots": {"funnel": "report/funnel.png", "reasons": reasons_png},
    }
    files["report.json"] = (json.dumps(_jsonable(report_json), sort_keys=True, indent=2, ensure_ascii=False,
                                       allow_nan=False) + "\n").encode("utf-8")

    html = _PAGE.render(
        title=data.title,
        created_at=data.created_at,
        summary=[(str(k), _display(v)) for k, v in data.summary.items()],
        ledger=ledger,
        funnel=funnel,
        funnel_png="report/funnel.png",
        rejections=rejections,
        reasons_png=reasons_png,
        scores=scores_view,
        orphan_thumbs=orphans,
    )
    files["report.html"] = html.encode("utf-8")
    logger.debug("rendered report %r: %d files", data.title, len(files))
    return files
