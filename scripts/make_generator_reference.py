"""Write tests/synthetic/data/generate_field_reference.npz: small seeded fields (image, labels, nuclei) that
tests/synthetic/test_generator_reference.py compares generate_field against, so a refactor of the generator
that changes its seeded output fails. Rewrite the file only when a change of the output is intended:

    python scripts/make_generator_reference.py tests/synthetic/data/generate_field_reference.npz
"""

import sys

import numpy as np

from napari_gradcamo.synthetic.generator import generate_field

#: name → generate_field arguments (one per confound and the no-signal case)
CONFIGS = {
    "plain": dict(seed=3, shape=(6, 32, 32), n_cells=3, treatment=1, n_classes=2),
    "background": dict(seed=5, shape=(6, 32, 40), n_cells=3, treatment=0, n_classes=3, confound="background", confound_class=2),
    "debris": dict(seed=7, shape=(8, 32, 32), n_cells=2, treatment=1, n_classes=2, confound="debris", voxel_size=(1.0, 0.4, 0.5)),
    "no_signal": dict(seed=11, shape=(6, 24, 24), n_cells=2, treatment=1, n_classes=2, cell_signal=False),
}


def main(path: str) -> None:
    out = {}
    for name, kw in CONFIGS.items():
        field = generate_field(**kw)
        out[f"{name}_image"] = field.image.data.astype(np.uint16)  # whole ADU levels in 0..65535
        assert np.array_equal(out[f"{name}_image"], field.image.data)
        out[f"{name}_labels"] = field.labels.astype(np.uint16)
        out[f"{name}_nuclei"] = field.nuclei.astype(np.uint16)
    np.savez_compressed(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
