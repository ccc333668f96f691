"""Compare two models' audits of the same cells: both scores per cell and their difference (no Qt)."""

from __future__ import annotations

import pandas as pd

from napari_gradcamo.output import results

#: per-model columns carried into the comparison
COMPARED = ("gradcamo", "predicted_class", "probability")


def compare_tables(a: pd.DataFrame, b: pd.DataFrame, name_a: str = "A", name_b: str = "B") -> pd.DataFrame:
    """One row per cell audited by both: ``<column>_A``, ``<column>_B`` and ``difference`` = B − A.

    The suffixes are ``_A``/``_B``; ``model_A``/``model_B`` hold the names. Cells audited by only one model
    are left out (a comparison needs both scores).
    """
    def audited(table, suffix):
        done = table[table["status"] == results.STATUS_AUDITED] if "status" in table else table
        cols = ["label", *[c for c in COMPARED if c in done]]
        return done[cols].rename(columns={c: f"{c}_{suffix}" for c in cols if c != "label"})

    both = audited(a, "A").merge(audited(b, "B"), on="label", how="inner")
    both["difference"] = both["gradcamo_B"] - both["gradcamo_A"]
    both["model_A"], both["model_B"] = name_a, name_b
    return both.sort_values("label", kind="stable").reset_index(drop=True)
