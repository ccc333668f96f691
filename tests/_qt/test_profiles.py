"""Profiles dock: compute profiles for the viewer's cells, UMAP ↔ labels linking both ways, loaded tables."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from napari_gradcamo._qt.profiles import ALL_IMAGES, ProfilesWidget
from napari_gradcamo._sample_data import field_layers


@pytest.fixture
def setup(make_napari_viewer, plugin_field, plugin_checkpoint, monkeypatch):
    import napari_gradcamo.profiles.extract as P

    # the UMAP itself is tested in test_profiles.py; a 2-component PCA keeps this test fast
    monkeypatch.setattr(P, "embed_umap", lambda x, seed=0, **kw: np.linalg.svd(x - x.mean(0), full_matrices=False)[0][:, :2])
    viewer = make_napari_viewer()
    added = [getattr(viewer, f"add_{kind}")(data, **kw) for data, kw, kind in field_layers(plugin_field)]
    widget = ProfilesWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.synchronous = True
    return viewer, widget, added[-1]


def test_compute_then_click_a_point_selects_its_cell_and_back(setup, plugin_field, plugin_checkpoint):
    viewer, widget, labels = setup
    assert widget.labels_layer is labels and not widget.compute_button.isEnabled()
    assert widget.load_model(plugin_checkpoint) and widget.feature_layer() == "stage3"
    assert widget.compute_button.isEnabled()
    assert widget.compute()
    table = widget.table
    assert len(table) == plugin_field.n_cells and {"gradcamo", "umap_1", "umap_2", "s_000"} <= set(table.columns)
    assert "Profiles failed" not in widget.panel.status.text()
    assert widget._scatter.get_offsets().shape == (plugin_field.n_cells, 2)
    # point → cell (a matplotlib pick on the scatter)
    row = 3
    widget._on_pick(SimpleNamespace(artist=widget._scatter, ind=np.array([row])))
    assert labels.selected_label == int(table["label"].iat[row])
    assert widget.highlighted == [row]
    # cell → point
    labels.selected_label = int(table["label"].iat[1])
    assert widget.highlighted == [1]
    np.testing.assert_allclose(widget._highlight.get_offsets()[0], table.loc[1, ["umap_1", "umap_2"]].to_numpy(float))
    for key in ("class", "site", "gradcamo", "predicted_class"):
        widget.color_combo.setCurrentText(key)
        assert widget._scatter is not None


def test_loaded_table_links_only_the_chosen_images_rows(setup, tmp_path):
    viewer, widget, labels = setup
    rng = np.random.default_rng(0)
    rows = [{"image": image, "label": k, "umap_1": rng.normal(), "umap_2": rng.normal(), "class": "control",
             "site": 1, "gradcamo": 0.5} for image in ("a.tif", "b.tif") for k in (1, 2, 3)]
    path = tmp_path / "umap.parquet"
    pd.DataFrame(rows).to_parquet(path)
    assert widget.load_table(path)
    assert [widget.image_combo.itemText(i) for i in range(widget.image_combo.count())] == [ALL_IMAGES, "a.tif", "b.tif"]
    widget.image_combo.setCurrentText("b.tif")
    assert widget.linked_rows().tolist() == [3, 4, 5]
    widget._on_pick(SimpleNamespace(artist=widget._scatter, ind=np.array([1])))  # the 2nd linked point: b.tif, label 2
    assert labels.selected_label == 2 and widget.highlighted == [4]
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"x": [1]}).to_parquet(bad)
    assert not widget.load_table(bad) and "lacks" in widget.panel.status.text()


def test_a_checkpoint_from_gradcamo_train_loads_in_the_audit_widget(make_napari_viewer, plugin_field, tmp_path):
    from napari_gradcamo._qt import AuditWidget
    from napari_gradcamo.crops.datasets import crops_from_fields
    from napari_gradcamo.synthetic.experiment import scenario_fields
    from napari_gradcamo.train.fit import TrainConfig, fit

    data = crops_from_fields(scenario_fields("honest", 4, 2, n_cells=6, shape=(12, 48, 48), sites_per_well=1), [8, 32, 32])
    config = TrainConfig(architecture_kwargs={"width": 4}, epochs=1, batch_size=8, val_fraction=0.0, device="cpu")
    result = fit(data, ["control", "treated"], ["DNA", "ER", "RNA", "AGP", "Mito"], [8, 32, 32], config, tmp_path)
    viewer = make_napari_viewer()
    for layer_data, kw, kind in field_layers(plugin_field):
        getattr(viewer, f"add_{kind}")(layer_data, **kw)
    widget = AuditWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.load_model(result.checkpoint)
    assert widget.bundle.metadata.training["config"]["epochs"] == 1


@pytest.mark.screenshot
def test_dock_reuses_the_audit_model_colours_by_what_differs_and_speaks_plainly(field_dock, tmp_path, monkeypatch,
                                                                                 qtbot, screenshot_dir):
    """The defects seen in issue 12: colour by a class that is '(none)' for every cell, no colour bar, a clipped
    title, jargon in the status line, and a second model to load although the Audit dock holds one."""
    import napari_gradcamo.profiles.extract as P

    monkeypatch.setattr(P, "embed_umap", lambda x, seed=0, **kw: np.linalg.svd(x - x.mean(0), full_matrices=False)[0][:, :2])
    viewer, audit, _, labels = field_dock
    widget = ProfilesWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Profiles")
    widget.synchronous = True
    assert widget.bundle is None
    assert widget.compute()  # no model chosen here: the Audit dock's is used, not read again
    assert widget.bundle is audit.bundle and "Audit dock" in widget.model_label.text()
    status = widget.panel.status.text()
    assert "cells profiled" in status and "ZCA" not in status and "eigenvalue" not in status
    assert "ZCA" in widget.panel.status.toolTip() or "sphering" in widget.panel.status.toolTip()
    offered = [widget.color_combo.itemText(i) for i in range(widget.color_combo.count())]
    assert offered and all(widget.table[c].astype(str).nunique() > 1 for c in offered)
    assert "class" not in offered or widget.table["class"].astype(str).nunique() > 1
    widget.color_combo.setCurrentText("normalised")
    assert widget._colorbar is not None
    low, high = widget._colorbar.mappable.get_clim()
    assert high - low < 1.0 and high <= widget.table["normalised"].max() + 1e-9  # spans the data, not 0..1
    two_wells = widget.table.assign(well=np.where(np.arange(len(widget.table)) % 2, "B02", "B03"))
    widget.set_table(two_wells, widget.info)
    widget.color_combo.setCurrentText("well")
    assert widget._colorbar is None and widget.axes.get_legend() is not None
    widget.canvas.draw()
    title = widget.axes.title
    renderer = widget.figure.canvas.get_renderer()
    box, fig_box = title.get_window_extent(renderer), widget.figure.bbox
    assert box.x0 >= fig_box.x0 and box.x1 <= fig_box.x1  # the title fits
    # both docks open on a 1366×768 screen: stacked they would not fit (each has a minimum height), so the
    # Profiles dock opens in a tab beside the Audit dock
    from qtpy.QtWidgets import QDockWidget

    def dock(w):
        while not isinstance(w, QDockWidget):
            w = w.parent()
        return w

    main = viewer.window._qt_window
    # placed when the dock is first shown, i.e. once the event loop has run
    qtbot.waitUntil(lambda: dock(audit) in main.tabifiedDockWidgets(dock(widget)), timeout=5_000)
    qtbot.wait(200)  # let the tabbed layout settle before shrinking the window
    main.resize(1366, 768)
    qtbot.waitUntil(lambda: main.height() <= 800, timeout=5_000)
    shot = viewer.screenshot(canvas_only=False)
    from imageio.v3 import imwrite

    imwrite(screenshot_dir / "screenshot_profiles_1366x768.png", shot)
    assert shot.shape[0] <= 800 and widget.panel.status.isVisible() and widget.compute_button.isVisible()
