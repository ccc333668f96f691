"""Opt-in reduced precision: bf16 autocast on CPU changes the scores only a little; fp16 needs CUDA."""

import numpy as np
import pytest

from napari_gradcamo.audit.run import AuditSettings, run_audit
from napari_gradcamo.models.bundled import load_demo_model
from napari_gradcamo.synthetic.experiment import demo_field


def test_bf16_scores_stay_close_to_fp32_and_flags_agree():
    field = demo_field()
    bundle = load_demo_model("shortcut")
    wanted = sorted(int(v) for v in np.unique(field.labels) if v)[:12]
    ref = run_audit(field.image, field.labels, bundle, AuditSettings(device="cpu"), only_labels=wanted).table
    low = run_audit(field.image, field.labels, bundle, AuditSettings(device="cpu", precision="bf16"),
                    only_labels=wanted).table
    change = (low.set_index("label")["gradcamo"] - ref.set_index("label")["gradcamo"]).abs()
    assert change.max() < 0.02  # measured 3e-4 / 5e-4 on the two demo models (benchmarks/precision.py)
    assert change.max() > 0  # the option really changes the arithmetic
    assert (low["flagged"].to_numpy() == ref["flagged"].to_numpy()).all()


@pytest.mark.parametrize("precision, match", [("fp16", "CUDA"), ("half", "fp32, bf16")])
def test_fp16_off_cuda_and_unknown_precisions_are_refused(precision, match):
    field = demo_field()
    with pytest.raises(ValueError, match=match):
        run_audit(field.image, field.labels, load_demo_model("shortcut"), AuditSettings(device="cpu", precision=precision),
                  only_labels=[1])
