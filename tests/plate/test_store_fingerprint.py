"""A plate field's stored outputs are fingerprinted: a maps file overwritten with garbage is audited again."""

from __future__ import annotations

import pytest

from napari_gradcamo.io.images import ImageError
from napari_gradcamo.models.bundled import bundled_model_path
from napari_gradcamo.plate import store
from napari_gradcamo.plate.run import iter_plate, make_client
from napari_gradcamo.plate.sources import discover
from napari_gradcamo.plate.synthetic import write_synthetic_plate

MODEL = bundled_model_path("honest")


@pytest.fixture(scope="module")
def small_plate(tmp_path_factory):
    """2 fields (2 wells × 1 site, 12×64×64)."""
    return write_synthetic_plate(tmp_path_factory.mktemp("plate"), 2, sites_per_well=1, chunks=(1, 4, 32, 32))


@pytest.mark.slow
def test_a_field_whose_maps_were_overwritten_is_audited_again_not_skipped(small_plate, tmp_path):
    source, layout = small_plate
    client, cluster = make_client(1, processes=False)
    try:
        first = list(iter_plate(source, MODEL, tmp_path, layout=layout, client=client))
        tasks = discover(source, layout)
        maps = store.field_stem(tmp_path, tasks[0]).with_suffix(".maps.npz")
        good = len(store.read_field_maps(tmp_path, tasks[0]))
        maps.write_bytes(b"garbage" * 100)
        with pytest.raises(ImageError, match="maps.npz is unreadable"):
            store.read_field_maps(tmp_path, tasks[0])
        assert store.finished_fingerprint(tmp_path, tasks[0]) is None
        again = list(iter_plate(source, MODEL, tmp_path, layout=layout, client=client))
        store.field_stem(tmp_path, tasks[1]).with_suffix(".maps.npz").unlink()  # a lost maps file: the same
        third = list(iter_plate(source, MODEL, tmp_path, layout=layout, client=client))
        table = store.field_stem(tmp_path, tasks[1]).with_suffix(".parquet")
        assert store.finished_fingerprint(tmp_path, tasks[1]) is not None
        table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])  # a truncated table: not finished
        assert store.finished_fingerprint(tmp_path, tasks[1]) is None
    finally:
        client.close()
        cluster.close()
    assert [o.status for o in first] == ["done", "done"]
    # before the fix the damaged field was "skipped" and its garbage maps kept
    assert {o.field: o.status for o in again} == {tasks[0].field_id: "done", tasks[1].field_id: "skipped"}
    assert {o.field: o.status for o in third} == {tasks[0].field_id: "skipped", tasks[1].field_id: "done"}
    assert len(store.read_field_maps(tmp_path, tasks[0])) == good > 0
