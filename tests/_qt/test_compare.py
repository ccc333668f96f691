"""Compare two models on the same cells: both scores, their difference, the scatter, click → cell."""

from types import SimpleNamespace

import numpy as np
import pytest

from napari_gradcamo._qt.compare_widget import CompareWidget
from napari_gradcamo.models.bundled import bundled_model_path


@pytest.mark.screenshot
def test_compare_two_models_and_go_to_a_cell(audited_dock, screenshot_dir):
    viewer, audit, labels = audited_dock
    table_a = audit.features().set_index("label")

    compare = CompareWidget(viewer)
    compare.panel.synchronous = True
    assert not compare.run()  # no model B yet: refused with the reason
    assert "model B" in compare.panel.status.text()
    assert compare.model_b.load_model(bundled_model_path("honest"))
    assert compare.run(), compare.panel.status.text()
    result = compare.comparison
    assert sorted(result["label"]) == sorted(table_a.index)
    np.testing.assert_allclose(result["gradcamo_A"], table_a.loc[result["label"], "gradcamo"])
    np.testing.assert_allclose(result["difference"], result["gradcamo_B"] - result["gradcamo_A"])
    assert compare.table_model.rowCount() == len(result)
    assert len(compare._scatter.get_offsets()) == len(result)

    target = int(result["label"].iloc[-1])
    compare._on_pick(SimpleNamespace(ind=[len(result) - 1]))
    assert labels.selected_label == target
    compare.resize(480, 900)
    assert compare.grab().save(str(screenshot_dir / "screenshot_compare.png"))
