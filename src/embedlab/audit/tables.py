"""The findings of an audit as CSV files, one per finding, and the list of held-out items read back.

Every row names its items by `id` (the item's position in the audit: training images first, then
validation images, each in the source's order) and `path` (the item's key: its path, with `#x_1,y_1,
x_2,y_2` for a bounding box), with the item's label, split and validation role, and the evidence.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from embedlab.atomic import atomic_write_text
from embedlab.audit.duplicates import DuplicateGroup
from embedlab.audit.identities import LabelErrors, MergeCandidates
from embedlab.audit.items import VALIDATION, AuditItems
from embedlab.data.check import UnreadableFile

DUPLICATE_COLUMNS = (
    "group",
    "match",
    "kinds",
    "id",
    "path",
    "label",
    "split",
    "role",
    "evidence",
    "held_out",
)
LABEL_ERROR_COLUMNS = (
    "rank", "id", "path", "label", "split", "role", "suggested_label", "other_votes", "own_votes", "k",
    "score", "similarity",
)  # fmt: skip
MERGE_COLUMNS = (
    "rank", "label_a", "label_b", "images_a", "images_b", "splits_a", "splits_b", "closer_items", "share",
    "similarity", "ids_a", "ids_b",
)  # fmt: skip
UNREADABLE_COLUMNS = ("path", "reason")
HELD_OUT_COLUMN = "held_out"


def _text(columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> str:
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return stream.getvalue()


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> Path:
    """The rows as a CSV file with a header, written atomically."""
    atomic_write_text(path, _text(columns, rows))
    return path


def duplicate_rows(
    groups: Sequence[DuplicateGroup],
    match: str,
    items: AuditItems,
    keep: Callable[[DuplicateGroup], bool] | None = None,
) -> list[dict[str, Any]]:
    """A row per member of each group (of those `keep` accepts), the group named `match-N` by its place
    in `groups`, so that a group has one name in every file; `held_out` marks the validation members of
    leaks and conflicts."""
    rows = []
    for number, group in enumerate(groups, start=1):
        if keep is not None and not keep(group):
            continue
        holds = group.is_leak or group.is_conflict
        for member, evidence in zip(group.members.tolist(), group.evidence, strict=True):
            rows.append(
                {
                    "group": f"{match}-{number}",
                    "match": match,
                    "kinds": ";".join(group.kinds),
                    "id": member,
                    "path": items.key(member),
                    "label": items.label(member),
                    "split": items.split[member],
                    "role": items.role(member),
                    "evidence": evidence,
                    "held_out": str(holds and items.split[member] == VALIDATION).lower(),
                }
            )
    return rows


def label_error_rows(errors: LabelErrors, items: AuditItems) -> list[dict[str, Any]]:
    return [
        {
            "rank": rank,
            "id": item,
            "path": items.key(item),
            "label": items.label(item),
            "split": items.split[item],
            "role": items.role(item),
            "suggested_label": items.label_names[int(suggested)],
            "other_votes": int(other),
            "own_votes": int(own),
            "k": errors.k,
            "score": f"{score:.4f}",
            "similarity": f"{similarity:.4f}",
        }
        for rank, (item, suggested, other, own, score, similarity) in enumerate(
            zip(
                errors.items.tolist(),
                errors.suggested,
                errors.other_votes,
                errors.own_votes,
                errors.scores,
                errors.similarities,
                strict=True,
            ),
            start=1,
        )
    ]


def merge_rows(merges: MergeCandidates, items: AuditItems, shown_ids: int = 20) -> list[dict[str, Any]]:
    """A row per identity pair, with the ids of (up to `shown_ids`) items of each identity."""
    rows = []
    for rank, (a, b, closer, share, similarity) in enumerate(
        zip(
            merges.first, merges.second, merges.closer_items, merges.shares, merges.similarities, strict=True
        ),
        start=1,
    ):
        row: dict[str, Any] = {"rank": rank, "closer_items": int(closer), "share": f"{share:.4f}"}
        row["similarity"] = f"{similarity:.4f}"
        for side, label in (("a", a), ("b", b)):
            members = (items.labels == label).nonzero()[0]
            row[f"label_{side}"] = items.label_names[int(label)]
            row[f"images_{side}"] = members.size
            row[f"splits_{side}"] = ";".join(sorted(set(items.split[members].tolist())))
            row[f"ids_{side}"] = ";".join(str(m) for m in members[:shown_ids])
        rows.append(row)
    return rows


def unreadable_rows(unreadable: Sequence[UnreadableFile]) -> list[dict[str, Any]]:
    return [{"path": str(u.path), "reason": u.reason} for u in unreadable]


def read_held_out(path: str | Path) -> set[str]:
    """The `path` keys of the rows whose `held_out` is true in an audit CSV (leaks.csv,
    label_conflicts.csv, or a copy edited by hand)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audit file {path} does not exist")
    with path.open(newline="") as stream:
        reader = csv.DictReader(stream)
        missing = [c for c in ("path", HELD_OUT_COLUMN) if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path} lacks the column(s) {', '.join(missing)}: give a leaks.csv or label_conflicts.csv "
                "written by `embedlab audit`"
            )
        held: set[str] = set()
        for number, row in enumerate(reader, start=2):
            flag = (row.get(HELD_OUT_COLUMN) or "").strip().lower()
            if flag not in ("true", "false"):
                raise ValueError(f"{path}, row {number}: held_out must be true or false, got {flag!r}")
            if flag == "true":
                held.add(row["path"])
    return held
