"""The audit of a collection with planted problems finds each with its kind; the same collection without
them yields no finding; its held-out items leave the scored queries; bad input gets one clear error."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from embedlab.config import DataConfig, ExperimentConfig, load_config
from embedlab.pipelines.audit import AuditResult, audit_dataset
from embedlab.pipelines.evaluate import evaluate_run
from embedlab.training.fit import fit

FINDINGS = (
    "exact_duplicates",
    "near_duplicates",
    "leaks",
    "label_conflicts",
    "label_errors",
    "merge_candidates",
    "unreadable",
)


def rows(out: Path, finding: str) -> list[dict[str, str]]:
    with (out / f"{finding}.csv").open(newline="") as stream:
        return list(csv.DictReader(stream))


def groups_of(table: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    found: dict[str, list[dict[str, str]]] = {}
    for row in table:
        found.setdefault(row["group"], []).append(row)
    return found


def group_with(table: list[dict[str, str]], key: str) -> list[dict[str, str]]:
    matching = [members for members in groups_of(table).values() if any(r["path"] == key for r in members)]
    assert len(matching) == 1, f"{key} is in {len(matching)} groups"
    return matching[0]


@pytest.fixture(scope="module")
def planted_audit(tmp_path_factory, audit_collection, audit_config) -> tuple[Any, AuditResult]:
    folder = tmp_path_factory.mktemp("planted")
    collection = audit_collection(folder, planted=True)
    return collection, audit_dataset(collection.csv, folder / "audit", config=audit_config)


def key(collection: Any, name: str) -> str:
    return str((collection.csv.parent / collection.planted[name]).resolve())


def photo(collection: Any, relative: str) -> str:
    return str((collection.root / relative).resolve())


def test_a_picture_under_two_identities_is_an_exact_label_conflict(planted_audit) -> None:
    collection, result = planted_audit
    group = group_with(rows(result.out, "exact_duplicates"), key(collection, "copy_across_identities"))
    assert {r["path"] for r in group} == {
        key(collection, "copy_across_identities"),
        photo(collection, "id_0/0.png"),
    }
    assert {r["label"] for r in group} == {"id_0", "id_1"}
    assert group[0]["kinds"] == "across_identities" and len({r["evidence"] for r in group}) == 1
    assert group_with(rows(result.out, "label_conflicts"), photo(collection, "id_0/0.png"))


def test_a_training_picture_in_the_validation_split_is_a_leak_held_out_on_its_validation_side(
    planted_audit,
) -> None:
    collection, result = planted_audit
    group = group_with(rows(result.out, "leaks"), key(collection, "copy_across_splits"))
    assert sorted((r["split"], r["held_out"]) for r in group) == [("train", "false"), ("validation", "true")]
    assert group[0]["kinds"] == "leak_train_validation" and group[0]["match"] == "exact"


def test_two_identities_of_the_same_images_are_a_merge_candidate_and_six_conflicts(planted_audit) -> None:
    _, result = planted_audit
    merges = rows(result.out, "merge_candidates")
    assert [(m["label_a"], m["label_b"]) for m in merges] == [("id_6", "id_7")]
    assert merges[0]["closer_items"] == "12" and merges[0]["share"] == "1.0000"
    conflicts = groups_of(rows(result.out, "exact_duplicates")).values()
    assert sum({r["label"] for r in g} == {"id_6", "id_7"} for g in conflicts) == 6


def test_the_relabelled_photo_is_a_likely_label_error_pointing_at_its_real_identity(planted_audit) -> None:
    collection, result = planted_audit
    errors = {r["path"]: r for r in rows(result.out, "label_errors")}
    relabelled = errors[key(collection, "relabelled")]
    assert (relabelled["label"], relabelled["suggested_label"]) == ("id_4", "id_3")
    assert errors[key(collection, "copy_across_identities")]["suggested_label"] == "id_0"
    # Nothing unplanted: every other candidate is one of the copies filed under id_7.
    assert all(
        "from_id_6" in path
        for path in set(errors) - {key(collection, "relabelled"), key(collection, "copy_across_identities")}
    )


def test_resized_reencoded_copies_are_near_duplicates_within_an_identity_or_leaking_across_roles(
    planted_audit,
) -> None:
    collection, result = planted_audit
    near = rows(result.out, "near_duplicates")
    within = group_with(near, key(collection, "reencoded"))
    assert {r["path"] for r in within} == {key(collection, "reencoded"), photo(collection, "id_5/0.png")}
    assert within[0]["kinds"] == "within_identity" and all(r["held_out"] == "false" for r in within)
    leak = group_with(near, key(collection, "reencoded_validation"))
    assert leak[0]["kinds"] == "leak_query_gallery" and all(r["held_out"] == "true" for r in leak)
    assert float(within[0]["evidence"]) >= result.threshold
    assert len(groups_of(near)) == 2
    assert "95% of" in result.threshold_sentence and f"{result.threshold:.4f}" in result.threshold_sentence


def test_an_unreadable_image_is_a_finding_of_its_own(planted_audit) -> None:
    _, result = planted_audit
    unreadable = rows(result.out, "unreadable")
    assert [Path(r["path"]).name for r in unreadable] == ["broken.png"]
    assert "cannot be read as an image" in unreadable[0]["reason"]
    assert result.counts["unreadable_images"] == 1


def test_the_metrics_are_recomputed_without_the_leaking_and_conflicting_items(planted_audit) -> None:
    _, result = planted_audit
    scored = {label: queries for label, queries, _ in result.metrics}
    # Queries with a positive to find: of the 20, the copy of a training photo has none; held out are
    # that copy (the validation side of the train/validation leak) and both copies of the
    # query/gallery leak.
    assert scored == {"every validation item": 19, "without the leaking items": 17, "without both": 17}
    for _, _, values in result.metrics:
        assert all(0.0 <= v <= 1.0 for v in values.values())


def test_the_summary_counts_splits_identities_and_queries_without_positives(planted_audit) -> None:
    _, result = planted_audit
    summary = json.loads((result.out / "audit.json").read_text())["summary"]
    assert summary["train"] == {"images": 56, "identities": 9, "singletons": 0}
    assert summary["validation"] == {"images": 20, "identities": 4, "singletons": 1}
    assert summary["identities_in_both_splits"] == 1
    # The copy of a training photo is the only validation image of id_2.
    assert summary["queries_without_positives"] == 1
    histogram = {row["images"]: row["identities"] for row in summary["images_per_identity"]}
    # id_3 lost its relabelled photo; every other identity has 6 or 7 images.
    assert (histogram["5"], histogram["6-10"], histogram["1"]) == (1, 11, 0)


def test_the_collection_without_the_plants_yields_no_finding(
    tmp_path, audit_collection, audit_config
) -> None:
    collection = audit_collection(tmp_path, planted=False)
    result = audit_dataset(collection.csv, tmp_path / "audit", config=audit_config)
    assert all(count == 0 for count in result.counts.values()), result.counts
    for finding in FINDINGS:
        assert rows(result.out, finding) == []
    assert [label for label, _, _ in result.metrics] == ["every validation item"]


def test_evaluate_holds_out_the_items_of_an_audits_leaks(
    planted_audit, tmp_path, audit_collection, audit_config
) -> None:
    collection, _ = planted_audit
    cfg, _ = load_config(
        None,
        [
            f"data.dataset={collection.csv}",
            "data.image_size=48",
            "data.skip_unreadable=true",
            "model.backbone=small_resnet",
            "model.embedding_dim=16",
            "train.epochs=1",
            "train.max_steps_per_epoch=2",
            "train.batch_size=16",
            "train.zero_shot=false",
            "loss={name: ContrastiveLoss}",
        ],
    )
    run = fit(cfg, tmp_path / "run").run_dir
    audited = audit_dataset(collection.csv, tmp_path / "audit", run_dir=run)
    assert "best checkpoint" in (tmp_path / "audit" / "audit.html").read_text()
    everything = evaluate_run(run, ["precision_at_1"])
    held = evaluate_run(run, ["precision_at_1"], exclude_audit=audited.out / "leaks.csv")
    assert (everything.n_queries, held.n_queries) == (20, 17)
    other = audit_collection(tmp_path / "other", planted=True)
    other_audit = audit_dataset(other.csv, tmp_path / "other_audit", config=audit_config)
    with pytest.raises(ValueError, match="none of the 3 held-out items"):
        evaluate_run(run, ["precision_at_1"], exclude_audit=other_audit.out / "leaks.csv")


def test_one_identity_an_empty_folder_and_a_built_in_set_are_clear_errors(
    tmp_path, audit_collection, audit_config
) -> None:
    collection = audit_collection(tmp_path, planted=False)
    lone = tmp_path / "lone"
    (lone / "whale").mkdir(parents=True)
    for n in range(3):
        (lone / "whale" / f"{n}.png").write_bytes((collection.root / "id_0" / f"{n}.png").read_bytes())
    with pytest.raises(ValueError, match=r"holds one identity \(whale, 3 images\).*at least two"):
        audit_dataset(lone, tmp_path / "out", config=audit_config)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        audit_dataset(tmp_path / "empty", tmp_path / "out", config=audit_config)
    with pytest.raises(FileNotFoundError, match="an audit reads image files"):
        audit_dataset("digits", tmp_path / "out", config=ExperimentConfig(data=DataConfig(dataset="digits")))
    assert not (tmp_path / "out").exists()
