"""audit.html: one self-contained page (thumbnails embedded as base64 PNGs, no script) that opens
offline: the summary, the metrics with and without the leaking and conflicting items, then each finding
as rows of thumbnails with the evidence under every image."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from embedlab.audit.duplicates import DuplicateGroup
from embedlab.audit.identities import LabelErrors, MergeCandidates
from embedlab.audit.items import AuditItems
from embedlab.data.check import UnreadableFile
from embedlab.data.images import crop_to_box

THUMBNAIL = 96
#: Rows drawn per finding (every row is in its CSV); members drawn per duplicate group.
SHOWN_ROWS = 30
SHOWN_MEMBERS = 8
SHOWN_PER_IDENTITY = 4


@dataclass(frozen=True)
class AuditPage:
    """What the page shows; `metrics`: rows of (what is held out, number of queries, {metric: value})."""

    title: str
    model: str
    threshold_sentence: str
    notes: list[str]
    summary: dict[str, Any]
    metrics: list[tuple[str, int, dict[str, float]]]
    exact: list[DuplicateGroup]
    near: list[DuplicateGroup]
    errors: LabelErrors
    merges: MergeCandidates
    unreadable: Sequence[UnreadableFile]


def _e(text: object) -> str:
    return html.escape(str(text))


def thumbnail(items: AuditItems, item: int) -> str:
    """An <img> of the item (cropped to its box), at most THUMBNAIL pixels a side."""
    with Image.open(items.paths[item]) as opened:
        box = items.boxes[item]
        image = (opened if box is None else crop_to_box(opened, box)).convert("RGB")
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(items.key(item))}">'


def _tile(items: AuditItems, item: int, caption: str) -> str:
    details = f"#{item} {items.label(item)} · {items.split[item]}" + (
        f" · {items.role(item)}" if items.role(item) else ""
    )
    return (
        f'<figure>{thumbnail(items, item)}<figcaption title="{_e(items.key(item))}">{_e(details)}'
        f"<br>{_e(caption)}</figcaption></figure>"
    )


def _more(total: int, shown: int, csv_name: str) -> str:
    if total <= shown:
        return ""
    return f'<p class="note">{shown} of {total} shown; every one is in {_e(csv_name)}.</p>'


def _groups_section(
    anchor: str, title: str, groups: list[DuplicateGroup], csv_name: str, items: AuditItems, evidence: str
) -> str:
    if not groups:
        return f'<section id="{anchor}"><h2>{_e(title)}</h2><p>None found.</p></section>'
    rows = []
    for number, group in enumerate(groups[:SHOWN_ROWS], start=1):
        tiles = "".join(
            _tile(items, int(m), f"{evidence} {value[:12] if evidence == 'hash' else value}")
            for m, value in list(zip(group.members.tolist(), group.evidence, strict=True))[:SHOWN_MEMBERS]
        )
        kinds = ", ".join(kind.replace("_", " ") for kind in group.kinds)
        rows.append(
            f'<div class="group {" ".join(group.kinds)}"><h3>group {number} '
            f"<small>{group.members.size} items: "
            f'{_e(kinds)}</small></h3><div class="tiles">{tiles}</div></div>'
        )
    return (
        f'<section id="{anchor}"><h2>{_e(title)} <small>({len(groups)} groups, {csv_name})</small></h2>'
        + "".join(rows)
        + _more(len(groups), SHOWN_ROWS, csv_name)
        + "</section>"
    )


def _errors_section(errors: LabelErrors, items: AuditItems) -> str:
    title = "Likely label errors"
    if errors.items.size == 0:
        return f'<section id="label-errors"><h2>{title}</h2><p>None found.</p></section>'
    rows = []
    for rank in range(min(SHOWN_ROWS, errors.items.size)):
        item = int(errors.items[rank])
        suggested = int(errors.suggested[rank])
        examples = (items.labels == suggested).nonzero()[0][:SHOWN_PER_IDENTITY]
        tiles = _tile(items, item, f"score {errors.scores[rank]:.2f}") + "".join(
            _tile(items, int(e), "of the suggested identity") for e in examples
        )
        rows.append(
            f'<div class="group"><h3>{rank + 1}. #{item} filed as {_e(items.label(item))} '
            f"<small>{int(errors.other_votes[rank])} of its {errors.k} nearest neighbours are "
            f"{_e(items.label_names[suggested])}, {int(errors.own_votes[rank])} its own</small></h3>"
            f'<div class="tiles">{tiles}</div></div>'
        )
    return (
        f'<section id="label-errors"><h2>{title} <small>({errors.items.size}, label_errors.csv)</small></h2>'
        + "".join(rows)
        + _more(errors.items.size, SHOWN_ROWS, "label_errors.csv")
        + "</section>"
    )


def _merges_section(merges: MergeCandidates, items: AuditItems) -> str:
    title = "Identities that may be one"
    if merges.first.size == 0:
        return f'<section id="merges"><h2>{title}</h2><p>None found.</p></section>'
    rows = []
    for rank in range(min(SHOWN_ROWS, merges.first.size)):
        a, b = int(merges.first[rank]), int(merges.second[rank])
        tiles = "".join(
            _tile(items, int(m), f"identity {items.label_names[label]}")
            for label in (a, b)
            for m in (items.labels == label).nonzero()[0][:SHOWN_PER_IDENTITY]
        )
        rows.append(
            f'<div class="group"><h3>{rank + 1}. {_e(items.label_names[a])} and {_e(items.label_names[b])} '
            f"<small>{int(merges.closer_items[rank])} of their {int(merges.total_items[rank])} images are "
            f"closer to the other identity (mean similarity {merges.similarities[rank]:.3f})</small></h3>"
            f'<div class="tiles">{tiles}</div></div>'
        )
    return (
        f'<section id="merges"><h2>{title} '
        f"<small>({merges.first.size} pairs, merge_candidates.csv)</small></h2>"
        + "".join(rows)
        + _more(merges.first.size, SHOWN_ROWS, "merge_candidates.csv")
        + "</section>"
    )


def _summary_section(page: AuditPage) -> str:
    summary = page.summary
    split_rows = "".join(
        f'<tr><td class="name">{name}</td><td>{summary[name]["images"]}</td>'
        f"<td>{summary[name]['identities']}</td><td>{summary[name]['singletons']}</td></tr>"
        for name in ("all", "train", "validation")
    )
    histogram = "".join(
        f'<tr><td class="name">{_e(row["images"])}</td><td>{row["identities"]}</td></tr>'
        for row in summary["images_per_identity"]
    )
    names = list(page.metrics[0][2]) if page.metrics else []
    metric_rows = "".join(
        f'<tr><td class="name">{_e(label)}</td><td>{queries}</td>'
        + "".join(f"<td>{values[n]:.4f}</td>" for n in names)
        + "</tr>"
        for label, queries, values in page.metrics
    )
    metric_head = "".join(f"<th>{_e(n)}</th>" for n in names)
    return (
        '<section id="summary"><h2>Summary</h2><div class="columns">'
        '<table class="numbers"><thead><tr><th>split</th><th>images</th><th>identities</th>'
        f"<th>singletons</th></tr></thead><tbody>{split_rows}</tbody></table>"
        '<table class="numbers"><thead><tr><th>images per identity</th><th>identities</th></tr></thead>'
        f"<tbody>{histogram}</tbody></table></div>"
        f"<p>{summary['queries']} validation queries search {summary['gallery_items']} gallery items "
        f"({_e(summary['validation_searches'])}); {summary['queries_without_positives']} queries have no "
        f"positive to find. {summary['identities_in_both_splits']} identities are in both splits.</p>"
        '<h3>Validation metrics with and without the findings</h3><table class="numbers" id="metrics">'
        f"<thead><tr><th>scored</th><th>queries</th>{metric_head}</tr></thead><tbody>{metric_rows}</tbody>"
        f'</table><p class="note">Scored with the audit\'s embeddings ({_e(page.model)}).</p></section>'
    )


def _unreadable_section(unreadable: Sequence[UnreadableFile]) -> str:
    if not unreadable:
        return '<section id="unreadable"><h2>Unreadable images</h2><p>None.</p></section>'
    rows = "".join(f"<tr><td>{_e(u.path)}</td><td>{_e(u.reason)}</td></tr>" for u in unreadable)
    return (
        f'<section id="unreadable"><h2>Unreadable images <small>({len(unreadable)}, unreadable.csv)</small>'
        f"</h2><table><thead><tr><th>path</th><th>why</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )


def render_page(page: AuditPage, items: AuditItems) -> str:
    """The whole page."""
    leaks = [g for g in page.exact + page.near if g.is_leak]
    conflicts = [g for g in page.exact + page.near if g.is_conflict]
    notes = "".join(f"<li>{_e(n)}</li>" for n in page.notes)
    counts = (
        f"{len(page.exact)} exact and {len(page.near)} near-duplicate groups ({len(leaks)} leaks, "
        f"{len(conflicts)} label conflicts), {page.errors.items.size} likely label errors, "
        f"{page.merges.first.size} identity pairs that may be one, {len(page.unreadable)} unreadable images"
    )
    nav = "".join(
        f'<a href="#{a}">{t}</a>'
        for a, t in (
            ("summary", "summary"),
            ("exact", "exact duplicates"),
            ("near", "near duplicates"),
            ("label-errors", "label errors"),
            ("merges", "merge candidates"),
            ("unreadable", "unreadable"),
        )
    )
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>embedlab audit: {_e(page.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body><main>"
        f"<header><h1>Audit of {_e(page.title)}</h1><p>{_e(counts)}.</p><p>{_e(page.threshold_sentence)}</p>"
        f"<nav>{nav}</nav></header>"
        + (f'<section class="warnings"><ul>{notes}</ul></section>' if notes else "")
        + _summary_section(page)
        + _groups_section(
            "exact",
            "Exact duplicates (same decoded pixels)",
            page.exact,
            "exact_duplicates.csv",
            items,
            "hash",
        )
        + _groups_section("near", "Near duplicates", page.near, "near_duplicates.csv", items, "similarity")
        + _errors_section(page.errors, items)
        + _merges_section(page.merges, items)
        + _unreadable_section(page.unreadable)
        + "</main></body></html>\n"
    )


_CSS = """
body { margin: 0; background: #f5f6f8; color: #1d2330;
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 20px 24px 60px; }
header h1 { margin: 8px 0 2px; font-size: 24px; }
header p { margin: 0 0 8px; color: #5b6270; }
nav a { margin-right: 16px; color: #2b5d9c; text-decoration: none; }
section { background: #fff; border: 1px solid #e1e4ea; border-radius: 8px; padding: 14px 20px;
          margin: 16px 0; }
section.warnings { border-color: #e0a39a; background: #fff6f4; }
h2 { font-size: 18px; margin: 4px 0 12px; }
h2 small, h3 small { color: #5b6270; font-weight: normal; }
h3 { font-size: 14px; margin: 14px 0 6px; }
table { border-collapse: collapse; margin: 4px 24px 8px 0; }
th, td { padding: 4px 8px; border-bottom: 1px solid #eceef2; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; font-size: 13px; }
table.numbers td { text-align: right; font-variant-numeric: tabular-nums; }
table.numbers td.name { text-align: left; }
.columns { display: flex; flex-wrap: wrap; align-items: flex-start; }
.tiles { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; width: 112px; }
figure img { display: block; width: 96px; height: 96px; object-fit: contain; background: #eef0f3;
             border: 2px solid #c9ced8; border-radius: 4px; }
.across_identities figure img { border-color: #d7191c; }
.leak_train_validation figure img, .leak_query_gallery figure img { border-color: #e08a00; }
figcaption { font-size: 11px; color: #5b6270; overflow-wrap: anywhere; }
.note { color: #5b6270; font-size: 13px; }
"""
