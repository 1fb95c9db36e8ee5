import pytest
import torch

from embedlab.config import DataConfig, ValidationSplitConfig
from embedlab.data.splits import prepare_data


def test_held_out_classes_are_disjoint_and_train_labels_contiguous() -> None:
    data = prepare_data(
        DataConfig(dataset="digits", validation=ValidationSplitConfig(split="classes", fraction=0.3))
    )
    train_classes = set(data.record["train_classes"])
    validation_classes = set(data.record["validation_classes"])
    assert train_classes.isdisjoint(validation_classes)
    assert len(validation_classes) == 3 and data.num_classes == 7
    assert data.train.labels.min() == 0 and data.train.labels.max() == 6
    assert int(data.class_counts.sum()) == len(data.train)
    assert data.gallery is None  # the validation set searches itself


def test_held_out_images_keep_every_class_on_both_sides() -> None:
    data = prepare_data(
        DataConfig(dataset="digits", validation=ValidationSplitConfig(split="images", fraction=0.2))
    )
    assert data.num_classes == 10
    assert set(data.query.labels.tolist()) == set(range(10))
    assert len(data.query) + len(data.train) == 1797


def test_split_is_seeded() -> None:
    cfg = DataConfig(dataset="digits", validation=ValidationSplitConfig(split="classes", seed=3))
    assert prepare_data(cfg).record == prepare_data(cfg).record
    other = prepare_data(
        DataConfig(dataset="digits", validation=ValidationSplitConfig(split="classes", seed=4))
    )
    first = prepare_data(cfg)
    assert other.record["validation_classes"] != first.record["validation_classes"] or not torch.equal(
        other.query.images, first.query.images
    )


def test_predefined_split_of_a_set_without_one_is_an_error() -> None:
    with pytest.raises(ValueError, match="has no test split"):
        prepare_data(DataConfig(dataset="digits", validation=ValidationSplitConfig(split="predefined")))


def test_gallery_can_be_the_training_images_with_original_labels() -> None:
    data = prepare_data(
        DataConfig(dataset="digits", gallery="train", validation=ValidationSplitConfig(split="images"))
    )
    assert data.gallery is not None
    assert set(data.gallery.labels.tolist()) == set(data.query.labels.tolist())


def test_csv_split_column_is_used_and_gallery_is_the_validation_set(image_csv) -> None:
    data = prepare_data(DataConfig(dataset=str(image_csv), image_size=8))
    assert data.record["validation_split"] == "predefined"
    assert data.record["train_classes"] == ["id_0", "id_1"]
    assert data.gallery is None and len(data.query) == 10
    assert data.query.groups is not None
    assert data.channels == 3 and data.image_size == 8


def test_folder_gets_an_open_set_split(image_folder) -> None:
    data = prepare_data(DataConfig(dataset=str(image_folder), image_size=8))
    assert data.record["validation_split"] == "classes"
    assert len(data.record["validation_classes"]) == 1


def test_unknown_dataset_lists_the_builtin_names() -> None:
    with pytest.raises(FileNotFoundError, match="fashion-mnist, mnist-5k, digits"):
        prepare_data(DataConfig(dataset="no-such-set"))


def test_subsampling_caps_each_split() -> None:
    data = prepare_data(
        DataConfig(
            dataset="digits", max_images_per_split=100, validation=ValidationSplitConfig(split="images")
        )
    )
    assert len(data.train) == 100 and len(data.query) == 100


def test_bounding_boxes_follow_their_rows_into_every_split(tmp_path, make_image_folder) -> None:
    import csv

    root = make_image_folder(tmp_path / "images", classes=4, per_class=4, size=12)
    table = tmp_path / "boxes.csv"
    with table.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["path", "label", "split", "x_1", "y_1", "x_2", "y_2"])
        for n, image in enumerate(sorted(root.rglob("*.png"))):
            split = "validation" if image.parent.name == "id_3" else "train"
            writer.writerow([str(image), image.parent.name, split, 0, 0, 4 + n % 8, 12])
    data = prepare_data(DataConfig(dataset=str(table), image_size=8))
    for part in (data.train, data.query):
        assert part.boxes is not None
        for path, box in zip(part.paths, part.boxes, strict=True):
            n = sorted(root.rglob("*.png")).index(path)
            assert box == (0, 0, 4 + n % 8, 12)


def _add_roles(table, query_every: int) -> None:
    """is_query on every `query_every`-th row, is_gallery on the others."""
    lines = table.read_text().splitlines()
    rows = [lines[0] + ",is_query,is_gallery"]
    for n, line in enumerate(lines[1:]):
        rows.append(line + (",1,0" if n % query_every == 0 else ",0,1"))
    table.write_text("\n".join(rows) + "\n")


def test_the_starter_config_keeps_a_csvs_own_split_column(image_csv) -> None:
    from importlib import resources

    from embedlab.config import load_config

    starter = resources.files("embedlab") / "configs" / "image_folder.yaml"
    cfg, _ = load_config(str(starter), [f"data.dataset={image_csv}", "data.image_size=8"])
    data = prepare_data(cfg.data)
    assert data.record["validation_split"] == "predefined"
    assert data.record["train_classes"] == ["id_0", "id_1"]
    assert data.record["validation_classes"] == ["id_2", "id_3"]
    assert data.notes == []


def test_an_explicit_resplit_of_a_csv_with_a_split_column_is_honoured_and_noted(image_csv) -> None:
    _add_roles(image_csv, 2)
    data = prepare_data(
        DataConfig(dataset=str(image_csv), image_size=8, validation=ValidationSplitConfig(split="classes"))
    )
    assert data.record["validation_split"] == "classes"
    assert len(data.notes) == 1
    assert "data.validation.split=classes re-splits" in data.notes[0]
    assert "split column (10 train, 10 validation rows) is not used" in data.notes[0]
    assert "is_query/is_gallery roles apply inside the new validation set" in data.notes[0]
    assert "set it to auto" in data.notes[0]


def test_a_train_gallery_in_place_of_a_csvs_roles_is_noted(image_csv) -> None:
    _add_roles(image_csv, 2)
    data = prepare_data(DataConfig(dataset=str(image_csv), image_size=8, gallery="train"))
    assert data.record["validation_split"] == "predefined" and data.gallery is not None
    assert len(data.notes) == 1 and "data.gallery=train: the is_query/is_gallery roles" in data.notes[0]
    assert data.record["query_images"] == 10 and data.record["gallery_images"] == 10


def test_the_split_record_counts_the_queries_and_gallery_items_the_roles_select(image_csv) -> None:
    _add_roles(image_csv, 4)  # the validation rows are data rows 10-19; rows 12 and 16 are queries
    data = prepare_data(DataConfig(dataset=str(image_csv), image_size=8))
    assert data.record["validation_images"] == 10
    assert (data.record["query_images"], data.record["gallery_images"]) == (2, 8)
    assert data.notes == []
