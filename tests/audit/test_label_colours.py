"""Colours of the labels layer by audit status and score (``audit/labels_features.py``, Qt-free)."""

import numpy as np
import pandas as pd

from napari_gradcamo.audit import labels_features
from napari_gradcamo.output import results


def test_score_colours_span_the_scores_seen():
    table = labels_features.ensure_schema(pd.DataFrame({
        "label": [1, 2, 3], "gradcamo": [0.03, 0.2, 0.46], "status": [results.STATUS_AUDITED] * 3,
    }))
    colors = labels_features.label_colors(table, "score", "gradcamo")
    from matplotlib import colormaps

    cmap = colormaps[labels_features.SCORE_COLORMAP]
    np.testing.assert_allclose(colors[1], cmap(0.0))
    np.testing.assert_allclose(colors[3], cmap(1.0))
    assert labels_features.legend("score", 0.5, table).value_range == (0.03, 0.46)


def test_ok_and_not_audited_differ_over_a_bright_stain():
    """At the labels layer's default opacity over white, 'looks at the cell' must not look like 'not audited'."""
    def over_white(rgba, opacity=0.45):
        alpha = rgba[3] * opacity
        return np.asarray(rgba[:3]) * alpha + (1 - alpha)

    gap = np.abs(over_white(labels_features.COLOR_OK) - over_white(labels_features.COLOR_NOT_AUDITED)).max()
    assert gap > 0.3
