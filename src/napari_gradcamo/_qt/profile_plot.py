"""What the Profiles dock draws: which columns colour the UMAP points, the points with a legend or a colour
bar, and the plain-language summary of a computed table."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Columns the points can be coloured by, in order of preference (only those that tell cells apart are offered)
COLOR_CHOICES = ("class", "predicted_class", "normalised", "gradcamo", "lift", "site", "well", "local_quality")
CONTINUOUS = ("normalised", "gradcamo", "lift", "local_quality")  # drawn with viridis and a colour bar
COLOR_TITLES = {"normalised": "normalised Grad-CAMO", "gradcamo": "Grad-CAMO", "lift": "Grad-CAMO lift",
                "local_quality": "local quality", "predicted_class": "predicted class"}
ALL_IMAGES = "— all rows —"


def audit_dock_bundle(viewer):
    """The model loaded in an open Grad-CAMO audit dock of ``viewer``, or None."""
    from napari_gradcamo._qt.audit_widget import AuditWidget

    docks = getattr(getattr(viewer, "window", None), "dock_widgets", {}) or {}
    for widget in docks.values():
        if isinstance(widget, AuditWidget) and widget.bundle is not None:
            return widget.bundle
    return None


def share_tab_with_audit_dock(widget) -> bool:
    """Put ``widget``'s dock in a tab beside an open Audit dock in the same dock area: the two docks stacked
    are taller than a 1366×768 screen."""
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    from napari_gradcamo._qt.audit_widget import AuditWidget

    def ancestor(w, kind):
        while w is not None and not isinstance(w, kind):
            w = w.parent()
        return w

    own = ancestor(widget, QDockWidget)
    main = ancestor(own, QMainWindow)
    if own is None or main is None:
        return False
    for other in main.findChildren(QDockWidget):
        if (other is not own and other.isVisible() and other.findChild(AuditWidget) is not None
                and main.dockWidgetArea(other) == main.dockWidgetArea(own)):
            main.tabifyDockWidget(other, own)
            own.raise_()
            return True
    return False


def color_choices(table: pd.DataFrame) -> list[str]:
    """The columns of :data:`COLOR_CHOICES` in ``table`` whose values differ between cells."""
    return [c for c in COLOR_CHOICES if c in table.columns and table[c].astype(str).replace("", np.nan).nunique() > 1]


def plain_summary(n: int, info: dict) -> tuple[str, str]:
    """(status line, tooltip with the technical details) after profiles were computed."""
    fitted = str(info.get("sphering_fitted_on") or "")
    against = "every cell (the cells carry no class)" if fitted.startswith("all cells") else fitted or "the cells"
    status = (f"{n} cells profiled from layer {info.get('feature_layer')}; features normalised against {against}. "
              "Click a point to find its cell.")
    details = "\n".join(f"{k}: {v}" for k, v in sorted(info.items()))
    return status, details


def draw_points(figure, ax, table: pd.DataFrame, linked: np.ndarray, key: str | None):
    """Scatter the UMAP of ``table``: ``linked`` rows coloured by ``key`` (a legend for categories, a colour
    bar spanning the data for scores), the other rows grey. Returns (the pickable scatter, colour bar or None)."""
    colorbar = None
    others = np.setdiff1d(np.arange(len(table)), linked)
    xy = table[["umap_1", "umap_2"]].to_numpy(float)
    if len(others):
        ax.scatter(xy[others, 0], xy[others, 1], s=6, color="0.8", zorder=1)
    if key not in table.columns:
        key = "gradcamo" if "gradcamo" in table.columns else None
    import matplotlib.pyplot as plt

    title = COLOR_TITLES.get(key, key or "")
    if key in CONTINUOUS:
        values = pd.to_numeric(table[key], errors="coerce").to_numpy(float)[linked]
        finite = values[np.isfinite(values)]
        low, high = (np.percentile(finite, [2, 98]) if len(finite) else (0.0, 1.0))
        scatter = ax.scatter(xy[linked, 0], xy[linked, 1], c=values, cmap="viridis", vmin=low,
                             vmax=max(high, low + 1e-6), s=18, picker=True, pickradius=4, zorder=2, plotnonfinite=True)
        colorbar = figure.colorbar(scatter, ax=ax, fraction=0.05, pad=0.02)
        colorbar.set_label(f"{title} (2nd–98th percentile)", fontsize=7)
        colorbar.ax.tick_params(labelsize=7)
    else:
        values = table[key].astype(str).to_numpy()[linked] if key else np.array([""] * len(linked))
        levels = sorted(set(values.tolist()))
        colors = [plt.cm.tab10(levels.index(v) % 10) for v in values]
        scatter = ax.scatter(xy[linked, 0], xy[linked, 1], c=colors, s=18, picker=True, pickradius=4, zorder=2)
        for k, v in enumerate(levels[:10]):
            ax.scatter([], [], color=plt.cm.tab10(k % 10), label=v or "(none)", s=18)
        if levels and key:
            ax.legend(title=title, fontsize=7, title_fontsize=7, loc="best")
    ax.set_xlabel("UMAP 1", fontsize=8)
    ax.set_ylabel("UMAP 2", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(f"Cells by {title}" if title else "Cells", fontsize=9)
    return scatter, colorbar
