"""The export gallery states the rule actually used, and its text never overlaps or leaves the page."""

import numpy as np
import pandas as pd

from napari_gradcamo.audit.labels_features import FlagRule
from napari_gradcamo.output.export import _flag_rule, _fmt, _panel_text, gallery_figure

RECORD = {"settings": {"audit": {"flag_on": "normalised", "threshold": 0.0}}}


def test_the_rule_set_when_exporting_wins_over_the_run_record():
    assert _flag_rule(RECORD) == ("normalised", 0.0)
    assert _flag_rule(RECORD, FlagRule(0.15, "gradcamo")) == ("gradcamo", 0.15)
    assert _flag_rule(RECORD, {"on": "gradcamo", "threshold": 0.15}) == ("gradcamo", 0.15)
    row = pd.Series({"gradcamo": 0.12, "chance": 0.05, "normalised": 0.022, "flagged": True,
                     "predicted_class": "treated", "probability": 0.9})
    text = _panel_text(row, 3, True, _flag_rule(RECORD, FlagRule(0.15, "gradcamo")))
    assert "gradcamo 0.120 < 0.150: flagged" in text and "normalised" not in text


def test_no_negative_zero():
    assert _fmt(-0.00001) == "0.000"
    assert _fmt(-0.00001, unlike=0.0) == "-0.00001" and _fmt(0.0, unlike=-0.00001) == "0.00000"
    row = pd.Series({"gradcamo": 0.1, "chance": 0.1, "normalised": -1e-9, "flagged": True})
    assert "-0.000 <" not in _panel_text(row, 1, True, ("normalised", 0.0))


def _panels(n):
    rng = np.random.default_rng(0)
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    row = pd.Series({"gradcamo": 0.12, "chance": 0.05, "gradcamo_norm": 0.0, "normalised": 0.07,
                     "flagged": True, "predicted_class": "predicted_class_long_name", "probability": 0.9})
    return [{"image": rng.random((32, 32)), "mask": mask, "cam": rng.random((32, 32)),
             "text": _panel_text(row, 100 + i, True, ("gradcamo", 0.15))} for i in range(n)]


def _boxes(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    page = fig.bbox
    titles = [(ax.title.get_window_extent(renderer), ax.get_window_extent(renderer)) for ax in fig.axes]
    return page, titles, fig._suptitle.get_window_extent(renderer)


TITLE = ("a_rather_long_field_name_from_a_microscope_r03c04f01.ome.tif: flagged cells\n"
         "checkpoint efficientnet-b0-3d-cellpainting.safetensors (sha256 0123456789ab) · GradCAM at "
         "stage4 · batch 8 · napari-gradcamo 0.2.0 · torch 2.14.1 (page 1/1)")


def test_a_one_cell_page_keeps_its_title_inside():
    page, titles, sup = _boxes(gallery_figure(_panels(1), TITLE))
    assert sup.x0 >= page.x0 - 1 and sup.x1 <= page.x1 + 1, (sup, page)
    assert sup.y1 <= page.y1 + 1
    for title, _ in titles:
        assert title.x0 >= page.x0 - 1 and title.x1 <= page.x1 + 1


def test_panel_titles_do_not_overlap_the_images_above():
    page, titles, sup = _boxes(gallery_figure(_panels(13), TITLE))
    axes = [ax for _, ax in titles]
    for title, own in titles:
        assert not title.overlaps(sup)
        for other in axes:
            if other is not own:
                assert not title.overlaps(other), (title, other)
