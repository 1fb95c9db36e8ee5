"""The HTML report of a comparison (or of one run): one self-contained file that opens offline.

Sections: the runs' warnings, when any has one (a run that ended below its zero-shot score, say); the
leaderboard (mean ± standard deviation over seeds, the best value of each column marked,
training time and throughput); paired comparisons over seeds (seed wins, sign and Wilcoxon tests, see
statistics.py); training curves (curves.py, from the zero-shot epoch 0 where the runs have one); per
combination, retrieval grids (grids.py) and a map of the query embeddings (embedding_map.py), both from
the runs' retrieval snapshots; every run, with its zero-shot and final value of the ranking metric, its
resolved config and the software versions. Images are PNGs embedded as base64 and the page has no script, so
the file can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import io
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from matplotlib.figure import Figure
from PIL import Image

from embedlab.atomic import atomic_write_text
from embedlab.reporting.curves import plot_curves
from embedlab.reporting.embedding_map import (
    DEFAULT_MAX_POINTS,
    MapMethod,
    plot_embedding_map,
    project_2d,
    resolve_method,
    sample_rows,
)
from embedlab.reporting.grids import check_images_match, retrieval_grid, sample_queries, worst_queries
from embedlab.reporting.leaderboard import COST_COLUMNS, LeaderboardRow, build_leaderboard, format_cell
from embedlab.reporting.runs import RunRecord, leaderboard_metrics, load_runs
from embedlab.reporting.statistics import compare_pairs

if TYPE_CHECKING:
    from embedlab.data.images import LabelledImages
    from embedlab.data.splits import DataSplits
    from embedlab.training.snapshot import RetrievalSnapshot

REPORT_FILE = "report.html"
#: Packages whose versions the report itself depends on (the runs record their own in summary.json).
REPORT_PACKAGES = ("numpy", "matplotlib", "scikit-learn", "umap-learn")
# Columns where less is better; every metric and the throughput are better when higher.
_LOWER_IS_BETTER = {"train_seconds"}


@dataclass(frozen=True)
class ReportOptions:
    """map_method: "auto" (UMAP if installed, else t-SNE), "umap", "tsne" or "pca"; map_points: queries
    drawn at most on a map; grid_queries: rows of each retrieval grid; grid_k: results shown per query;
    alpha: the level the paired comparisons' verdicts use; grids: draw the retrieval grids, which read the
    runs' images through the data pipeline (and so import torch); without them a report needs neither
    torch nor Lightning."""

    map_method: MapMethod = "auto"
    map_points: int = DEFAULT_MAX_POINTS
    grid_queries: int = 6
    grid_k: int = 8
    alpha: float = 0.05
    grids: bool = True


def build_report(folder: str | Path, options: ReportOptions | None = None) -> Path:
    """Write FOLDER/report.html for a comparison folder or a run folder; returns its path."""
    folder = Path(folder)
    options = options or ReportOptions()
    resolve_method(options.map_method)  # an unusable map method fails before any work
    runs = load_runs(folder)
    path = folder / REPORT_FILE
    atomic_write_text(path, render_report(runs, folder, options))
    return path


def render_report(runs: Sequence[RunRecord], folder: Path, options: ReportOptions) -> str:
    """The whole page as a string; `folder` is where it will be written (its name is the title)."""
    title = folder.resolve().name
    metrics = leaderboard_metrics(runs)
    ranking = "map_at_r" if "map_at_r" in metrics else metrics[0]
    rows = build_leaderboard([(r.combination, r.seed, r.summary) for r in runs], metrics, sort_by=ranking)
    seeds = sorted({r.seed for r in runs})
    subtitle = (
        f"{_plural(len(rows), 'combination')} × seeds {', '.join(map(str, seeds))} · "
        f"ranked by {ranking} · made {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    body = "\n".join(
        [
            f"<header><h1>embedlab report: {_e(title)}</h1><p>{_e(subtitle)}</p>{_NAV}</header>",
            _warnings_section(runs),
            _leaderboard_section(rows, metrics),
            _pairs_section(runs, rows, ranking, options.alpha),
            _curves_section(runs, metrics),
            _retrieval_section(runs, rows, options),
            _runs_section(runs, folder, options, ranking),
        ]
    )
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>embedlab report: {_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


# ------------------------------------------------------------------------------------------- helpers


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def png_bytes(picture: Figure | Image.Image, dpi: int = 100) -> bytes:
    """A matplotlib figure or a Pillow image as PNG bytes."""
    buffer = io.BytesIO()
    if isinstance(picture, Figure):
        picture.savefig(buffer, format="png", dpi=dpi)
    else:
        picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _img(picture: Figure | Image.Image, alt: str) -> str:
    data = base64.b64encode(png_bytes(picture)).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>'


def _table(head: Sequence[str], rows: Sequence[str], numbers: bool = True) -> str:
    """A table of escaped header names and ready <tr> rows; `numbers` right-aligns cells not named."""
    # Long column names such as images_per_second may break after an underscore.
    header = "".join(f"<th>{_e(name).replace('_', '_<wbr>')}</th>" for name in head)
    kind = ' class="numbers"' if numbers else ""
    table = f"<table{kind}><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return f'<div class="scroll">{table}</div>'


# ------------------------------------------------------------------------------------------ sections


def _warnings_section(runs: Sequence[RunRecord]) -> str:
    """The warnings the runs' summaries carry, each naming its run; nothing when there are none."""
    items = [
        f"<li><b>{_e(run.combination)} · seed {run.seed}</b>: {_e(warning)}</li>"
        for run in runs
        for warning in run.summary.get("warnings", [])
    ]
    if not items:
        return ""
    return f'<section id="warnings" class="warnings"><h2>Warnings</h2><ul>{"".join(items)}</ul></section>'


def _leaderboard_section(rows: Sequence[LeaderboardRow], metrics: Sequence[str]) -> str:
    columns = [*metrics, *COST_COLUMNS]
    best = {}
    for column in columns:
        means = [row.mean(column) for row in rows]
        best[column] = min(means) if column in _LOWER_IS_BETTER else max(means)
    lines = []
    for rank, row in enumerate(rows, start=1):
        cells = [
            f"<td>{rank}</td>",
            f'<td class="name">{_e(row.combination)}</td>',
            f"<td>{len(row.seeds)}</td>",
        ]
        for column in columns:
            marked = len(rows) > 1 and row.mean(column) == best[column]
            attributes = ' class="best" title="best in this column"' if marked else ""
            # A narrow window may wrap a cell before its "±", never inside "± 0.0012".
            text = _e(format_cell(row, column)).replace("± ", "±&nbsp;")
            cells.append(f"<td{attributes}>{text}</td>")
        lines.append(f"<tr>{''.join(cells)}</tr>")
    return (
        '<section id="leaderboard"><h2>Leaderboard</h2>'
        + _table(["#", "combination", "seeds", *columns], lines)
        + _note(
            "Mean ± sample standard deviation over seeds, of the final epoch's validation metrics. "
            "Marked: the best mean of each column (the lowest training time). train_seconds counts "
            "training only (evaluation excluded); images_per_second is training throughput. A higher "
            "mean is not yet a ranking: see the paired comparisons below. Runs scored zero-shot (their "
            "backbone's pooled features before training) show that value beside their own under Runs."
        )
        + "</section>"
    )


def _pairs_section(
    runs: Sequence[RunRecord], rows: Sequence[LeaderboardRow], metric: str, alpha: float
) -> str:
    heading = f'<section id="pairs"><h2>Paired comparisons over seeds ({_e(metric)})</h2>'
    if len(rows) < 2:
        return heading + _note("One combination: there is nothing to compare.") + "</section>"
    values: dict[str, dict[int, float]] = {}
    for run in runs:
        values.setdefault(run.combination, {})[run.seed] = float(run.summary["metrics"][metric])
    pairs = compare_pairs(values, metric, order=[row.combination for row in rows])
    head = ["A", "B", "mean A − B", "seeds won A : B", "ties", "sign test p", "Wilcoxon p", "Holm", "verdict"]
    lines = []
    for pair in pairs:
        cells = [
            f'<td class="name">{_e(pair.a)}</td>',
            f'<td class="name">{_e(pair.b)}</td>',
            f"<td>{pair.mean_difference:+.4f}</td>",
            f"<td>{pair.wins.wins} : {pair.wins.losses}</td>",
            f"<td>{pair.wins.ties}</td>",
            f"<td>{pair.sign_p:.3g}</td>",
            f"<td>{pair.wilcoxon_p:.3g}</td>",
            f"<td>{pair.wilcoxon_p_holm:.3g}</td>",
            f'<td class="name">{_e(pair.verdict(alpha))}</td>',
        ]
        lines.append(f"<tr>{''.join(cells)}</tr>")
    seeds = min(len(p.seeds) for p in pairs)
    return (
        heading
        + _table(head, lines)
        + _note(
            "Each pair is compared seed by seed on the seeds both ran. Sign test and Wilcoxon signed-rank "
            "test: two-sided, exact; Holm: the Wilcoxon p-value adjusted for "
            f"{_plural(len(pairs), 'pair')}. A verdict names a leader only when the adjusted p-value is "
            f"below {alpha:g}. With n seeds no p-value can fall below 2/2^n ({2 / 2**seeds:.3g} for "
            f"{seeds}): winning every seed of a few is not evidence of a better method, and a "
            "non-significant test is not evidence that two are equal."
        )
        + "</section>"
    )


def _curves_section(runs: Sequence[RunRecord], metrics: Sequence[str]) -> str:
    figure = plot_curves(runs, metrics)
    return (
        '<section id="curves"><h2>Training curves</h2>'
        + _img(figure, "training loss and validation metrics by epoch and by training time")
        + _note(
            "Validation metrics after each validated epoch, by epochs trained (left) and by cumulative "
            "training seconds (right); epoch 0 (a star), where a run has it, is its zero-shot score: the "
            "backbone's pooled features before training. Lines: mean over seeds; bands and bars: lowest "
            "to highest seed. "
            "Training losses of different loss functions are on different scales: compare their shapes."
        )
        + "</section>"
    )


def _retrieval_section(
    runs: Sequence[RunRecord], rows: Sequence[LeaderboardRow], options: ReportOptions
) -> str:
    data: dict[str, DataSplits] = {}
    parts = ['<section id="retrieval"><h2>Retrieval grids and embedding maps</h2>']
    parts.append(
        _note(
            f"For each combination, its run of the lowest seed, after its last epoch: {options.grid_queries} "
            f"queries drawn at random and the {options.grid_queries} worst (fewest correct in the top "
            f"{options.grid_k}), each followed by its top {options.grid_k} results, framed green when the "
            "label matches and red when it does not (captions: label and cosine similarity; R: how many "
            "correct items the gallery holds). Queries whose gallery holds no correct item are left out."
        )
    )
    for row in rows:
        run = min((r for r in runs if r.combination == row.combination), key=lambda r: r.seed)
        parts.append(f"<h3>{_e(row.combination)} <small>seed {run.seed}</small></h3>")
        parts.append(_run_visuals(run, data, options))
    parts.append("</section>")
    return "\n".join(parts)


def _run_visuals(run: RunRecord, data: dict[str, DataSplits], options: ReportOptions) -> str:
    snapshot = run.snapshot
    if snapshot is None:
        return _note(
            "This run has no retrieval snapshot (retrieval.npz): it was trained before embedlab saved one. "
            "Train it again to see its retrieval grids and embedding map."
        )
    figures = []
    class_names = None
    if options.grids:
        splits = _run_data(run, snapshot, data)
        if isinstance(splits, str):
            return splits
        query, gallery = splits
        class_names = query.class_names
        k = options.grid_k
        for name, rows in (
            ("queries drawn at random", sample_queries(snapshot, options.grid_queries)),
            ("worst queries", worst_queries(snapshot, options.grid_queries, k)),
        ):
            grid = retrieval_grid(snapshot, list(rows), query, gallery, k, f"{run.combination}: {name}")
            figures.append(_img(grid, f"retrieval grid, {name}"))
    sample = sample_rows(snapshot.query_labels.size, options.map_points)
    points, method = project_2d(snapshot.query_embeddings[sample], options.map_method, seed=0)
    title = f"{run.combination}: {sample.size} of {snapshot.query_labels.size} queries, {method}"
    figure = plot_embedding_map(points, snapshot.query_labels[sample], class_names, title)
    figures.append(_img(figure, f"embedding map ({method})"))
    return '<div class="visuals">' + "".join(figures) + "</div>"


def _run_data(
    run: RunRecord, snapshot: RetrievalSnapshot, data: dict[str, DataSplits]
) -> tuple[LabelledImages, LabelledImages] | str:
    """The run's validation query and gallery images, checked against its snapshot, or a note saying
    why they cannot be read. Only the grids read images, so only they import the data pipeline (torch)."""
    from embedlab.data.splits import prepare_data

    key = run.config.data.model_dump_json()
    try:
        if key not in data:
            data[key] = prepare_data(run.config.data)
        splits = data[key]
        gallery = splits.query if snapshot.gallery_is_query or splits.gallery is None else splits.gallery
        check_images_match(snapshot, splits.query, gallery)
    except (ValueError, FileNotFoundError, OSError) as error:
        return _note(f"Retrieval grids unavailable: {error}")
    return splits.query, gallery


def _best_epoch(summary: dict) -> str:
    """The best epoch, counted from 1 like metrics.csv and the progress lines. Summaries written before
    the zero-shot row existed (they have no `zero_shot_metrics`) counted from 0."""
    best = summary.get("best_epoch")
    if best is None:
        return "-"
    return str(int(best) + (0 if "zero_shot_metrics" in summary else 1))


def _zero_shot_cells(summary: dict, metric: str) -> list[str]:
    """The run's zero-shot and final value of `metric` and the change (`-` without a zero-shot row)."""
    final = float(summary["metrics"][metric])
    zero_shot = (summary.get("zero_shot_metrics") or {}).get(metric)
    if zero_shot is None:
        return ["<td>-</td>", f"<td>{final:.4f}</td>", "<td>-</td>"]
    below = ' class="below" title="below its zero-shot value"' if final < zero_shot else ""
    return [
        f"<td>{float(zero_shot):.4f}</td>",
        f"<td{below}>{final:.4f}</td>",
        f"<td{below}>{final - float(zero_shot):+.4f}</td>",
    ]


def _runs_section(runs: Sequence[RunRecord], folder: Path, options: ReportOptions, metric: str) -> str:
    zero_shot = any(run.summary.get("zero_shot_metrics") for run in runs)
    head = ["combination", "seed", "folder", "epochs", "best epoch"]
    if zero_shot:
        head += [f"zero-shot {metric}", f"final {metric}", "change"]
    head += ["train s", "wall s", "images/s"]
    lines = []
    for run in runs:
        s = run.summary
        cells = [
            f'<td class="name">{_e(run.combination)}</td>',
            f"<td>{run.seed}</td>",
            f'<td class="name">{_e(_relative(run.run_dir, folder))}</td>',
            f"<td>{s['epochs']}</td>",
            f"<td>{_best_epoch(s)}</td>",
            *(_zero_shot_cells(s, metric) if zero_shot else []),
            f"<td>{float(s['train_seconds']):.1f}</td>",
            f"<td>{float(s['wall_seconds']):.1f}</td>",
            f"<td>{float(s['images_per_second']):.1f}</td>",
        ]
        lines.append(f"<tr>{''.join(cells)}</tr>")
    configs = "".join(
        f"<details><summary>{_e(run.combination)} · seed {run.seed}</summary>"
        f"<pre>{_e(run.config_text)}</pre></details>"
        for run in runs
    )
    note = (
        _note(
            f"Zero-shot {metric}: the run's backbone's pooled features (no neck), scored on the same "
            "validation split before the first epoch (metrics.csv's epoch 0); change: final minus "
            "zero-shot, what fine-tuning added. Marked: a final value below the zero-shot one."
        )
        if zero_shot
        else ""
    )
    return (
        '<section id="runs"><h2>Runs, configs and versions</h2>'
        + _table(head, lines)
        + note
        + f"<h3>Resolved configs</h3>{configs}"
        f"<h3>Software versions</h3>{_versions_table(runs, options)}"
        "</section>"
    )


def _relative(path: Path, folder: Path) -> str:
    """A run folder relative to the report's (an absolute path would expose the machine's layout)."""
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return path.name


def _versions_table(runs: Sequence[RunRecord], options: ReportOptions) -> str:
    """Package versions the runs recorded (flagged where runs differ), then the report's own."""
    training: dict[str, set[str]] = {}
    for run in runs:
        for package, version in run.summary["versions"].items():
            training.setdefault(package, set()).add(str(version))
    rows = [
        (package, ", ".join(sorted(v)), "training, differs between runs" if len(v) > 1 else "training")
        for package, v in training.items()
    ]
    rows.append(("python", platform.python_version(), "this report"))
    for package in REPORT_PACKAGES:
        try:
            rows.append((package, importlib.metadata.version(package), "this report"))
        except importlib.metadata.PackageNotFoundError:
            rows.append((package, "not installed", "this report"))
    lines = ["<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>" for row in rows]
    return _table(["package", "version", "used for"], lines, numbers=False) + _note(
        f"Embedding maps: method {options.map_method!r} (auto: UMAP with umap-learn, else t-SNE)."
    )


_NAV = (
    '<nav><a href="#leaderboard">Leaderboard</a><a href="#pairs">Paired comparisons</a>'
    '<a href="#curves">Curves</a><a href="#retrieval">Retrieval</a><a href="#runs">Runs</a></nav>'
)

_CSS = """
body { margin: 0; background: #f5f6f8; color: #1d2330;
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 20px 24px 60px; }
header h1 { margin: 8px 0 2px; font-size: 24px; }
header p { margin: 0 0 10px; color: #5b6270; }
nav a { margin-right: 16px; color: #2b5d9c; text-decoration: none; }
section { background: #fff; border: 1px solid #e1e4ea; border-radius: 8px; padding: 14px 20px;
          margin: 16px 0; }
h2 { font-size: 18px; margin: 4px 0 12px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
h3 small { color: #5b6270; font-weight: normal; }
table { border-collapse: collapse; margin: 4px 0 8px; }
th, td { padding: 4px 8px; border-bottom: 1px solid #eceef2; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; font-size: 13px; }
.scroll { overflow-x: auto; }
table.numbers { font-size: 13px; }
table.numbers td { text-align: right; font-variant-numeric: tabular-nums; }
table.numbers td.name { text-align: left; }
td.best { font-weight: 700; background: #e3f4e8; color: #0f5c2a; }
td.below { font-weight: 700; background: #fbe9e7; color: #8a1c0c; }
section.warnings { border-color: #e0a39a; background: #fff6f4; }
.note { color: #5b6270; font-size: 13px; max-width: 980px; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
.visuals { display: flex; flex-wrap: wrap; gap: 8px 24px; align-items: flex-start; }
details { margin: 4px 0; }
summary { cursor: pointer; }
pre { background: #f3f4f6; padding: 10px; overflow: auto; font-size: 12px; }
"""
