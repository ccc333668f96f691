"""Profile-quality panel of the Profiles dock: metrics of computed profiles, UMAP coloured by local quality."""

import json

import numpy as np
import pytest

from napari_gradcamo._qt.profiles import ProfilesWidget
from napari_gradcamo._sample_data import field_layers


@pytest.fixture
def setup(make_napari_viewer, plugin_checkpoint, monkeypatch):
    import napari_gradcamo.profiles.extract as P
    from napari_gradcamo.synthetic.generator import generate_field

    # the UMAP itself is tested in test_profiles.py; a 2-component PCA keeps this test fast
    monkeypatch.setattr(P, "embed_umap", lambda x, seed=0, **kw: np.linalg.svd(x - x.mean(0), full_matrices=False)[0][:, :2])
    field = generate_field(4, shape=(12, 96, 96), n_cells=24, treatment=1, n_classes=2, confound="background")
    viewer = make_napari_viewer()
    for data, kw, kind in field_layers(field):
        getattr(viewer, f"add_{kind}")(data, **kw)
    widget = ProfilesWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.synchronous = True
    assert widget.load_model(plugin_checkpoint) and widget.compute()
    return viewer, widget


def test_metrics_colour_the_umap_by_local_quality(setup, tmp_path):
    viewer, widget = setup
    panel = widget.metrics_panel
    assert panel.compute(), widget.panel.status.text()
    quality = widget.table["local_quality"].to_numpy()
    assert len(quality) == len(widget.table) and np.nanmin(quality) >= 0 and np.nanmax(quality) <= 1
    assert 0 <= panel.metrics["trustworthiness"] <= 1 and "trustworthiness" in panel.text.text()
    assert widget.color_combo.currentText() == "local_quality"
    colours = widget._scatter.get_array()
    np.testing.assert_allclose(np.asarray(colours), quality[widget.linked_rows()])
    widget.canvas.draw()
    widget.grab().save(str(tmp_path / "profiles_metrics.png"))
    # a loaded table shows the metrics.json written beside it
    widget.table.drop(columns=["local_quality"]).assign(local_quality=quality).to_parquet(tmp_path / "cells.parquet")
    (tmp_path / "metrics.json").write_text(json.dumps({"cells": 3, "trustworthiness": 0.75}))
    assert widget.load_table(tmp_path / "cells.parquet")
    assert "trustworthiness: 0.750" in panel.text.text()
