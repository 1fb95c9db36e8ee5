"""The shard folder on disk: written shard by shard, read one shard at a time, torn writes survived."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from embedlab.embeddings.shards import (
    EmbeddingShards,
    Shard,
    ShardSpec,
    shard_is_complete,
    shard_path,
    write_items,
    write_manifest,
    write_shard,
    write_spec,
)

N_ITEMS, SHARD_SIZE, DIM = 10, 4, 3


def _spec() -> ShardSpec:
    return ShardSpec(
        model={"checkpoint_sha256": "abc"},
        preprocessing={},
        source="/images",
        n_items=N_ITEMS,
        shard_size=SHARD_SIZE,
        embedding_dim=DIM,
        label_names=["a", "b"],
    )


def _rows(shard: int) -> Shard:
    ids = np.arange(N_ITEMS)[shard * SHARD_SIZE : (shard + 1) * SHARD_SIZE]
    return Shard(ids=ids, labels=ids % 2, embeddings=np.repeat(ids[:, None], DIM, axis=1).astype(np.float32))


def _folder(tmp_path: Path, shards: range = range(3)) -> Path:
    folder = tmp_path / "shards"
    spec = _spec()
    write_spec(folder, spec)
    write_items(
        folder, [{"path": f"/images/{i}.png", "label": "ab"[i % 2], "extra": {}} for i in range(N_ITEMS)]
    )
    for shard in shards:
        write_shard(folder, shard, _rows(shard))
    return folder


def test_shards_split_the_ids_and_the_last_one_is_short() -> None:
    spec = _spec()
    assert spec.n_shards == 3
    assert [list(spec.ids_of(k)) for k in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_finished_folder_is_read_shard_by_shard_in_id_order(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    write_manifest(folder, _spec())
    shards = EmbeddingShards(folder)
    assert len(shards) == N_ITEMS and shards.dim == DIM
    assert [shard.ids.tolist() for shard in shards] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert shards.labels().tolist() == [i % 2 for i in range(N_ITEMS)]
    assert shards.rows(np.array([9, 0, 5]))[:, 0].tolist() == [9.0, 0.0, 5.0]
    assert [item["path"] for item in shards.items()][:2] == ["/images/0.png", "/images/1.png"]
    assert [record.file for record in shards.manifest.shards] == [
        "shards/shard-000000.npz",
        "shards/shard-000001.npz",
        "shards/shard-000002.npz",
    ]


def test_an_unfinished_folder_cannot_be_opened_or_finished(tmp_path: Path) -> None:
    folder = _folder(tmp_path, shards=range(2))
    with pytest.raises(FileNotFoundError, match="unfinished: run `embedlab embed` again with --resume"):
        EmbeddingShards(folder)
    with pytest.raises(ValueError, match="1 of 3 shards are missing or incomplete .first: shard-000002.npz"):
        write_manifest(folder, _spec())


def test_a_shard_with_other_ids_or_size_is_not_complete(tmp_path: Path) -> None:
    folder = _folder(tmp_path, shards=range(0))
    spec = _spec()
    write_shard(folder, 0, _rows(1))  # shard 1's rows under shard 0's name
    assert not shard_is_complete(folder, spec, 0)
    wrong_size = _rows(1)
    write_shard(folder, 1, Shard(wrong_size.ids, wrong_size.labels, wrong_size.embeddings[:, :2]))
    assert not shard_is_complete(folder, spec, 1)
    write_shard(folder, 2, _rows(2))
    assert shard_is_complete(folder, spec, 2)
    shard_path(folder, 2).write_bytes(b"not a shard")
    assert not shard_is_complete(folder, spec, 2)


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from pathlib import Path
    from embedlab.embeddings import shards as m

    folder, shard = Path(sys.argv[1]), int(sys.argv[2])
    ids = np.arange(shard * 4, min(shard * 4 + 4, 10))
    real_savez = np.savez

    def savez_half_then_die(stream, **arrays):
        real_savez(stream, **arrays)
        stream.truncate(stream.tell() // 2)
        stream.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    m.np.savez = savez_half_then_die
    m.write_shard(folder, shard, m.Shard(ids, ids % 2, np.full((ids.size, 3), -1.0, np.float32)))
    """
)


@pytest.mark.parametrize("shard", [1, 2], ids=["replacing a shard", "writing a new shard"])
def test_a_writer_killed_mid_shard_leaves_every_shard_before_it_whole(tmp_path: Path, shard: int) -> None:
    folder = _folder(tmp_path, shards=range(2))
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(folder), str(shard)], capture_output=True, timeout=120
    )
    assert killed.returncode == -9, killed.stderr
    assert list((folder / "shards").glob(".*.tmp")), "the kill should leave a torn temporary behind"
    spec = _spec()
    assert shard_is_complete(folder, spec, 0) and shard_is_complete(folder, spec, 1)
    assert not shard_is_complete(folder, spec, 2)
    write_shard(folder, 2, _rows(2))  # what `embed --resume` does: the missing shard only
    write_manifest(folder, spec)
    rows = np.concatenate([s.embeddings for s in EmbeddingShards(folder)])
    assert rows[:, 0].tolist() == list(range(N_ITEMS))  # the killed writer's -1 rows never landed
