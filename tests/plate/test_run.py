"""Whole plates: an OME-Zarr HCS plate end to end on dask.distributed, resume, failures, a killed worker."""

import json
import logging
import os
import signal

import numpy as np
import pandas as pd
import pytest

from napari_gradcamo.audit.run import AuditSettings, run_audit
from napari_gradcamo.io.images import Image
from napari_gradcamo.io.lazy import open_image, open_labels
from napari_gradcamo.models.bundled import bundled_model_path
from napari_gradcamo.models.checkpoint import load_checkpoint
from napari_gradcamo.plate import store
from napari_gradcamo.plate.report import write_report
from napari_gradcamo.plate.run import iter_plate, make_client, run_plate
from napari_gradcamo.plate.sources import discover
from napari_gradcamo.plate.synthetic import write_synthetic_plate

MODEL = bundled_model_path("honest")


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    """A 6-field OME-Zarr plate (3 wells × 2 sites, 12×64×64, 12 cells each) and its layout."""
    return write_synthetic_plate(tmp_path_factory.mktemp("plate"), 6, sites_per_well=2, chunks=(1, 4, 32, 32))


def _expected_cells(tasks) -> set:
    return {(t.field_id, int(label)) for t in tasks for label in np.unique(open_labels(t.image)) if label > 0}


def _thread_client(n_workers=1):
    return make_client(n_workers, processes=False)


def test_plate_end_to_end_matches_the_single_field_audit(plate, tmp_path):
    source, layout = plate
    client, cluster = _thread_client(2)
    try:
        outcomes, written = run_plate(source, MODEL, tmp_path, layout=layout, client=client)
    finally:
        client.close()
        cluster.close()
    assert [o.status for o in outcomes] == ["done"] * 6
    assert {o.model_loads for o in outcomes} == {1}, "the model is loaded once per worker, not per task"
    table = pd.read_parquet(written["parquet"])
    tasks = discover(source, layout)
    keys = list(zip(table["field"], table["label"]))
    assert len(keys) == len(set(keys)) and set(keys) == _expected_cells(tasks)
    assert set(table["treatment"]) == {"control", "treated"}
    chance = table["chance"]
    np.testing.assert_allclose(table["normalised"], (table["gradcamo"] - chance) / (1 - chance))
    # the lazy, distributed result equals the in-memory single-field audit of the same field
    task = tasks[3]
    lazy = open_image(task.image)
    eager = Image(np.asarray(lazy.data).astype(np.float32), lazy.channel_names, lazy.voxel_size)
    reference = run_audit(eager, open_labels(task.image), load_checkpoint(MODEL), AuditSettings()).table
    mine = table[table["field"] == task.field_id].sort_values("label")
    np.testing.assert_allclose(mine["gradcamo"].to_numpy(), reference.sort_values("label")["gradcamo"].to_numpy(),
                               rtol=1e-5, atol=1e-6)
    assert len(store.read_field_maps(tmp_path, task)) == len(mine)
    page = write_report(tmp_path).read_text()
    assert page.count("data:image/png;base64,") == 3 and "Failed fields" in page and "None." in page
    declared = store.read_run(tmp_path)["plates"]  # the plate's own rows and columns, for the report's heatmaps
    assert declared == {"SYN01": {"rows": sorted({w[0] for w in table["well"]}),
                                  "columns": sorted({w[1:] for w in table["well"]})}}


def test_rerun_skips_finished_fields_and_redoes_changed_ones(plate, tmp_path):
    source, layout = plate
    client, cluster = _thread_client(1)
    try:
        first = list(iter_plate(source, MODEL, tmp_path, layout=layout, client=client))
        tasks = discover(source, layout)
        results = {t.field_id: store.field_stem(tmp_path, t).with_suffix(".parquet") for t in tasks}
        stamps = {k: p.stat().st_mtime_ns for k, p in results.items()}
        again = list(iter_plate(source, MODEL, tmp_path, layout=layout, client=client))
        results[tasks[2].field_id].unlink()  # as if the run had died before this field finished
        partial = list(iter_plate(source, MODEL, tmp_path, layout=layout, client=client))
        after_partial = {k: p.stat().st_mtime_ns for k, p in results.items()}
        changed = list(iter_plate(source, MODEL, tmp_path, AuditSettings(threshold=0.3), layout=layout, client=client))
    finally:
        client.close()
        cluster.close()
    assert [o.status for o in first] == ["done"] * 6
    assert [o.status for o in again] == ["skipped"] * 6
    redone = tasks[2].field_id
    assert {k: v for k, v in after_partial.items() if k != redone} == {k: v for k, v in stamps.items() if k != redone}
    assert [o.field for o in partial if o.status == "done"] == [tasks[2].field_id]
    assert sum(o.status == "skipped" for o in partial) == 5
    assert [o.status for o in changed] == ["done"] * 6, "new settings → a new fingerprint → every field again"
    table, failures = store.collect(tmp_path, store.read_run(tmp_path)["fingerprint"])
    assert failures.empty and len(table) == len(_expected_cells(tasks))


def test_folder_of_tiff_fields_records_a_failed_field_with_its_reason(tmp_path):
    import tifffile

    from napari_gradcamo.synthetic.files import write_synthetic_manifest

    write_synthetic_manifest(tmp_path / "data", n_fields=3, sites_per_well=3)
    bad = sorted((tmp_path / "data" / "images").glob("*_s2_masks.tif"))[0]
    tifffile.imwrite(bad, np.ones((3, 10, 10), np.uint16), photometric="minisblack")
    client, cluster = _thread_client(1)
    try:
        outcomes, _ = run_plate(tmp_path / "data" / "images", MODEL, tmp_path / "out", client=client)
    finally:
        client.close()
        cluster.close()
    statuses = {o.field: o.status for o in outcomes}
    assert sorted(statuses.values()) == ["done", "done", "failed"]
    failed = next(o for o in outcomes if o.status == "failed")
    assert failed.field.endswith("/2") and "Labels shape (3, 10, 10)" in failed.reason
    record = json.loads(next((tmp_path / "out" / "fields").rglob("*.failed.json")).read_text())
    assert record["reason"] == failed.reason
    assert "Labels shape (3, 10, 10)" in write_report(tmp_path / "out").read_text()


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_a_worker_killed_mid_run_costs_no_cell_and_no_duplicate(tmp_path):
    """Two worker processes; one is killed (SIGKILL) while it audits a field: the run completes, and every cell
    of every field is in the plate table exactly once. When the cluster closes, no worker is killed for
    taking too long to exit (before PromptExit both were, after every run: "still alive after 4.0 seconds")."""
    source, layout = write_synthetic_plate(tmp_path / "plate", 8, sites_per_well=2)
    client, cluster = make_client(2, processes=True)
    nanny = logging.getLogger("distributed.nanny")
    records = _Records()
    nanny.addHandler(records)
    killed = None
    try:
        outcomes = []
        for outcome in iter_plate(source, MODEL, tmp_path / "out", layout=layout, client=client):
            outcomes.append(outcome)
            if killed is None and outcome.status == "done":
                busy = [address for address, keys in client.processing().items() if keys]
                assert busy, "a worker must be mid-field when it is killed"
                pids = client.run(os.getpid, workers=[busy[0]])
                killed = pids[busy[0]]
                os.kill(killed, signal.SIGKILL)
        table, failures = store.collect(tmp_path / "out", store.read_run(tmp_path / "out")["fingerprint"])
    finally:
        client.close()
        cluster.close()
        nanny.removeHandler(records)
    assert killed is not None
    assert not [m for m in records.messages if "still alive" in m], records.messages
    assert sorted(o.status for o in outcomes) == ["done"] * 8 and failures.empty
    keys = list(zip(table["field"], table["label"]))
    assert len(keys) == len(set(keys)) == len(_expected_cells(discover(source, layout)))


def test_fields_without_masks_are_segmented_by_cellpose_in_the_same_graph(tmp_path, generalist_weights):
    from napari_gradcamo.io.images import read_labels
    from napari_gradcamo.segment.cellpose import SegmentationSettings
    from napari_gradcamo.synthetic.files import write_synthetic_manifest

    write_synthetic_manifest(tmp_path / "data", n_fields=2, sites_per_well=2)
    for masks in (tmp_path / "data" / "images").glob("*_s2_masks.tif"):
        masks.unlink()
    segmentation = SegmentationSettings(model=str(generalist_weights), cyto_channel=3, nucleus_channel=0, diameter=16)
    client, cluster = _thread_client(1)
    try:
        outcomes, _ = run_plate(tmp_path / "data" / "images", MODEL, tmp_path / "out", client=client,
                                segmentation=segmentation)
    finally:
        client.close()
        cluster.close()
    assert [o.status for o in outcomes] == ["done", "done"], [o.reason for o in outcomes]
    made = list((tmp_path / "out" / "masks").glob("*_s2_*.tif"))
    assert len(made) == 1, "only the field without masks is segmented"
    labels = read_labels(made[0])
    segmented = next(o for o in outcomes if o.field.endswith("/2"))
    assert segmented.cells == len(np.unique(labels)) - 1 > 0
