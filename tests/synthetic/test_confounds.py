"""The two planted cues the verdict's evidence table adds (synthetic/confounds.py) lie where they say."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gradcamo.synthetic.confounds import GLOW_CHANNEL, PUNCTA_CHANNEL, add_glow, add_puncta, confound_fields
from napari_gradcamo.synthetic.generator import STAINS, generate_field

SHAPE = (8, 48, 48)


def field(treatment: int):
    return generate_field(5, shape=SHAPE, n_cells=5, treatment=treatment, voxel_size=(2.0, 1.5, 1.5), cell_signal=False)


@pytest.mark.parametrize("where", ["cells", "background"])
def test_puncta_lie_where_asked_and_only_in_treated_fields(where):
    ch = STAINS.index(PUNCTA_CHANNEL)
    before = field(1).image.data[ch].copy()
    treated = add_puncta(field(1), where, seed=3)
    added = treated.image.data[ch] - before
    inside = float(added[treated.labels > 0].sum()) / float(added.sum())
    assert added.sum() > 0 and (inside > 0.8 if where == "cells" else inside < 0.2)
    control = field(0)
    untouched = control.image.data.copy()
    np.testing.assert_array_equal(add_puncta(control, where, seed=3).image.data, untouched)  # absence marks control


def test_glow_brightens_the_medium_more_for_the_treated_class():
    ch = STAINS.index(GLOW_CHANNEL)
    gains = []
    for treatment in (0, 1):
        f = field(treatment)
        before = f.image.data[ch].copy()
        add_glow(f, seed=3)
        added = f.image.data[ch] - before
        gains.append((added[f.labels == 0].mean(), added[f.labels > 0].mean()))
    (control_medium, control_cells), (treated_medium, treated_cells) = gains
    assert treated_medium > 3 * control_medium > 0
    assert treated_cells < 0.5 * treated_medium  # the cells exclude the medium


def test_confound_fields_alternate_classes():
    fields = confound_fields("glow", 1, 4, honest=False, shape=SHAPE, voxel_size=(2.0, 1.5, 1.5), sites_per_well=1)
    assert [f.treatment for f in fields] == [0, 1, 0, 1]
    assert all(f.image.metadata["confound"] == "glow" for f in fields)
    with pytest.raises(ValueError, match="Unknown confound"):
        confound_fields("smoke", 1, 2, honest=True)
