"""The HTML report of a tiny comparison: its content, its images, the CLI, and a real headless browser."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from embedlab.cli import app
from embedlab.reporting.report import ReportOptions, build_report
from embedlab.reporting.runs import load_runs
from embedlab.reporting.statistics import seed_wins

from .conftest import COMBINATIONS, printed

METRICS = ("precision_at_1", "recall_at_5", "r_precision", "map_at_r", "map")
PNG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def report(tiny_comparison: Path) -> Path:
    """The report, built by `embedlab report` (PCA keeps it quick; t-SNE is tested on its own)."""
    result = CliRunner().invoke(app, ["report", str(tiny_comparison), "--map-method", "pca"])
    assert result.exit_code == 0, result.output
    assert f"report:{tiny_comparison / 'report.html'}" in printed(result.output)
    return tiny_comparison / "report.html"


def _table(page: str, section: str) -> str:
    """The first table of a section, without the line-break hints of its header."""
    return page.split(f'<section id="{section}">')[1].split("</table>")[0].replace("<wbr>", "")


def test_every_run_and_metric_is_in_the_leaderboard_with_its_mean_and_spread(report, tiny_comparison) -> None:
    page = report.read_text()
    table = html.unescape(_table(page, "leaderboard"))
    runs = load_runs(tiny_comparison)
    for column in [*METRICS, "train_seconds", "images_per_second"]:
        assert f"<th>{column}</th>" in table
    for combination in COMBINATIONS:
        assert combination in table
        for metric in METRICS:
            values = [r.summary["metrics"][metric] for r in runs if r.combination == combination]
            assert f"{statistics.fmean(values):.4f} ±\xa0{statistics.stdev(values):.4f}" in table
    for run in runs:
        assert html.escape(f"{run.combination} · seed {run.seed}") in page  # its resolved config
        assert html.escape(f"runs/{run.run_dir.parent.name}/seed-{run.seed}") in page
    assert str(tiny_comparison) not in page  # folders are given relative to the report


def test_the_best_mean_of_each_column_is_marked(report, tiny_comparison) -> None:
    table = html.unescape(_table(report.read_text(), "leaderboard"))
    runs = load_runs(tiny_comparison)
    marked = re.findall(r'<td class="best"[^>]*>([^<]+)</td>', table)
    assert len(marked) >= len(METRICS) + 2
    best_map = max(
        statistics.fmean(r.summary["metrics"]["map_at_r"] for r in runs if r.combination == c)
        for c in COMBINATIONS
    )
    assert any(cell.startswith(f"{best_map:.4f} ±") for cell in marked)
    fastest = min(
        statistics.fmean(r.summary["train_seconds"] for r in runs if r.combination == c) for c in COMBINATIONS
    )
    assert any(cell.startswith(f"{fastest:.1f} ±") for cell in marked)


def test_the_pair_shows_seed_wins_and_an_undecided_verdict_for_two_seeds(report, tiny_comparison) -> None:
    table = html.unescape(_table(report.read_text(), "pairs"))
    by_seed = {
        c: {
            r.seed: r.summary["metrics"]["map_at_r"] for r in load_runs(tiny_comparison) if r.combination == c
        }
        for c in COMBINATIONS
    }
    first = table.index(COMBINATIONS[0]) < table.index(COMBINATIONS[1])
    a, b = COMBINATIONS if first else COMBINATIONS[::-1]
    wins = seed_wins([by_seed[a][s] - by_seed[b][s] for s in (0, 1)])
    assert f"<td>{wins.wins} : {wins.losses}</td>" in table
    assert "undecided: 2 seeds cannot reach p &lt; 0.05" in html.escape(table)


def test_the_embedded_images_decode(report) -> None:
    images = PNG.findall(report.read_text())
    # the curves, then per combination two retrieval grids and an embedding map
    assert len(images) == 1 + 3 * len(COMBINATIONS)
    for data in images:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) > 100


def test_a_single_run_folder_without_a_snapshot_still_gets_a_report(tiny_comparison, tmp_path) -> None:
    [finished] = list((tiny_comparison / "runs").glob("*MultiSimilarity*/seed-1"))
    run_dir = shutil.copytree(finished, tmp_path / "run")
    (run_dir / "retrieval.npz").unlink()  # as in a run trained before runs saved a snapshot
    page = build_report(run_dir, ReportOptions(map_method="pca")).read_text()
    assert "One combination: there is nothing to compare." in page
    assert "has no retrieval snapshot" in page
    assert len(PNG.findall(page)) == 1  # the curves


def test_the_report_command_refuses_an_unknown_map_and_a_folder_without_runs(
    tiny_comparison, tmp_path
) -> None:
    bad = CliRunner().invoke(app, ["report", str(tiny_comparison), "--map-method", "mds"])
    assert bad.exit_code == 2 and "auto, umap, tsne, pca" in bad.output
    missing = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert missing.exit_code == 2 and "comparison.json" in missing.output


def test_the_report_opens_offline_in_chromium_without_errors_or_broken_images(
    report, chromium, tmp_path
) -> None:
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    outside: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else outside.append(r.url))
    page.goto(report.as_uri())
    widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
    assert len(widths) == 1 + 3 * len(COMBINATIONS) and all(w > 0 for w in widths)
    assert errors == [] and outside == []
    assert page.locator("#leaderboard tbody tr").count() == len(COMBINATIONS)
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as image:
        assert image.size[0] == 1280 and image.size[1] > 2000  # no sideways overflow; the whole page


def test_the_best_epoch_is_counted_from_1_as_metrics_csv_counts(report, tiny_comparison) -> None:
    page = report.read_text()
    for run in load_runs(tiny_comparison):
        folder = html.escape(f"runs/{run.run_dir.parent.name}/seed-{run.seed}")
        row = page.split(f'<td class="name">{folder}</td>')[1].split("</tr>")[0]
        epochs, best = re.findall(r"<td>([^<]*)</td>", row)[:2]
        # summary.json counts epochs trained, like metrics.csv; two epochs read "1" or "2", never "0".
        assert (epochs, best) == ("2", str(run.summary["best_epoch"]))
        assert best in ("1", "2")


def test_a_run_below_its_zero_shot_score_shows_both_values_and_the_warning(tmp_path, monkeypatch) -> None:
    import dataclasses

    from embedlab.config import load_config
    from embedlab.training import callbacks
    from embedlab.training.fit import fit

    from .conftest import TINY

    score = callbacks.score_validation
    scored = []

    def perfect_zero_shot(*args, **kwargs):
        result = score(*args, **kwargs)
        scored.append(result)
        return (
            dataclasses.replace(result, metrics=dict.fromkeys(result.metrics, 1.0))
            if len(scored) == 1
            else result
        )

    monkeypatch.setattr(callbacks, "score_validation", perfect_zero_shot)
    cfg, _ = load_config(None, [*TINY, "train.zero_shot=on"])
    summary = fit(cfg, tmp_path / "run", progress=False).summary
    page = build_report(tmp_path / "run", ReportOptions(map_method="pca", grids=False)).read_text()
    [warning] = summary["warnings"]
    warnings = page.split('<section id="warnings"')[1].split("</section>")[0]
    assert html.escape(warning) in warnings and "run · seed 0" in warnings
    runs = _table(page, "runs")
    assert "<th>zero-shot map_at_r</th><th>final map_at_r</th><th>change</th>" in runs
    final = summary["metrics"]["map_at_r"]
    assert f"<td>1.0000</td><td{BELOW}>{final:.4f}</td><td{BELOW}>{final - 1:+.4f}</td>" in runs
    assert "epoch 0 (a star)" in page


BELOW = ' class="below" title="below its zero-shot value"'


def test_runs_from_before_the_zero_shot_row_report_their_epochs_from_1(tiny_comparison, tmp_path) -> None:
    [finished] = list((tiny_comparison / "runs").glob("*MultiSimilarity*/seed-1"))
    run_dir = shutil.copytree(finished, tmp_path / "run")
    summary = json.loads((run_dir / "summary.json").read_text())
    best = summary["best_epoch"]
    # as such a run wrote them: no zero-shot keys, best_epoch and metrics.csv's epochs counted from 0
    old = {k: v for k, v in summary.items() if k not in ("zero_shot_metrics", "warnings")}
    (run_dir / "summary.json").write_text(json.dumps({**old, "best_epoch": best - 1}))
    with (run_dir / "metrics.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    with (run_dir / "metrics.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, [k for k in rows[0] if k != "stage"])
        writer.writeheader()
        for r in rows:
            writer.writerow({**{k: v for k, v in r.items() if k != "stage"}, "epoch": int(r["epoch"]) - 1})
    page = build_report(run_dir, ReportOptions(map_method="pca", grids=False)).read_text()
    row = page.split('<section id="runs">')[1].split("</tr>")[1]
    assert re.findall(r"<td>([^<]*)</td>", row)[1:3] == ["2", str(best)]
    [run] = load_runs(run_dir)
    assert [r["epoch"] for r in run.history] == ["1", "2"]  # read in today's numbering
    assert '<section id="warnings"' not in page and "zero-shot map_at_r" not in page


def test_a_report_imports_lightning_never_and_torch_only_to_draw_grids(tiny_comparison, tmp_path) -> None:
    folder = tmp_path / "comparison"
    shutil.copytree(tiny_comparison, folder)
    (folder / "report.html").unlink()
    probe = (
        "import sys\n"
        "from embedlab.cli import app\n"
        "try:\n"
        f"    app(['report', {str(folder)!r}, '--map-method', 'pca', *sys.argv[1:]])\n"
        "except SystemExit as done:\n"
        "    assert done.code in (0, None), done.code\n"
        "print('torch' in sys.modules, 'lightning' in sys.modules)\n"
    )
    without_grids = subprocess.run(
        [sys.executable, "-c", probe, "--no-grids"], capture_output=True, text=True, timeout=300
    )
    assert without_grids.returncode == 0, without_grids.stderr
    assert without_grids.stdout.splitlines()[-1] == "False False"
    page = (folder / "report.html").read_text()
    assert "embedding map (PCA)" in page and "retrieval grid" not in page
    with_grids = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert with_grids.returncode == 0, with_grids.stderr
    assert with_grids.stdout.splitlines()[-1] == "True False"
    assert "retrieval grid, worst queries" in (folder / "report.html").read_text()
