"""generate_field's seeded output is what it was when its steps were split out (issue 22): the reference file
was written by scripts/make_generator_reference.py from the one-function generator, before the split."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from napari_gradcamo.synthetic.generator import generate_field

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = Path(__file__).parent / "data" / "generate_field_reference.npz"


def configs() -> dict:
    spec = importlib.util.spec_from_file_location("make_generator_reference", ROOT / "scripts" / "make_generator_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CONFIGS


@pytest.mark.parametrize("name", sorted(configs()))
def test_seeded_fields_match_the_reference(name):
    kwargs = configs()[name]
    field = generate_field(**kwargs)
    with np.load(REFERENCE) as ref:
        np.testing.assert_array_equal(field.labels, ref[f"{name}_labels"])
        np.testing.assert_array_equal(field.nuclei, ref[f"{name}_nuclei"])
        # whole ADU levels: a float32 rounding difference between CPUs may move a voxel by one level
        difference = np.abs(field.image.data.astype(np.float64) - ref[f"{name}_image"])
        assert difference.max() <= 1.0 and (difference > 0).mean() < 1e-3, name
