"""Single-cell profiles from a trained classifier: layer features, Grad-CAMO, sphering, wells, UMAP.

* **Features**: the output of a chosen layer (default: the deepest 3D feature map, the one the classifier
  pools) averaged over z, y, x — one vector per cell — in the same table as the cell's audit scores
  (Grad-CAMO, chance, neighbour/background shares, predicted class), computed in the same forward pass.
  For a VAE checkpoint (``vae-3d``) the default features are the latent means (``to_mu``), and the Grad-CAM
  explains the latent unit with the largest mean (see :mod:`napari_gradcamo.audit.latent_targets`).
* **Sphering**: ZCA whitening fitted on the control cells (DeepProfiler's practice), with pycytominer's
  ``Spherize`` (``ZCA-cor``: standardise, then ZCA); features constant in the controls are dropped first.
  When the control set is rank-deficient or near-singular (fewer control cells than features, collinear
  features), a numpy ZCA-cor with an eigenvalue floor is used instead and the summary says so.
* **Wells**: per plate/well median (or mean) of the sphered features, with the cell count and the median
  Grad-CAMO.
* **UMAP** (umap-learn) of the sphered cell profiles, coloured by class, by site and by Grad-CAMO: PNG
  files, and the coordinates in the Parquet tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from napari_gradcamo.crops.datasets import MASK_CELL, MASK_OTHER, CropSet
from napari_gradcamo.progress import CancelToken, ProgressCallback, Steps, check, drain

FEATURE_PREFIX = "f_"
SPHERED_PREFIX = "s_"
UMAP_COLUMNS = ("umap_1", "umap_2")
#: a VAE checkpoint's profiles: its latent means (the output of ``to_mu``, see models/vae.py)
LATENT_MEAN_LAYER = "to_mu"


def default_feature_layer(model, crop_shape: Sequence[int], in_channels: int) -> str:
    """The deepest top-level layer whose feature map is still spatial (what a classifier pools into its head)."""
    from napari_gradcamo.models.layers import list_target_layers

    every = [l for l in list_target_layers(model, crop_shape, in_channels) if np.prod(l.output_shape[1:]) > 1]
    layers = [l for l in every if "." not in l.name] or every
    if not layers:
        raise ValueError("The model has no layer with a 3D feature map to take profiles from.")
    return layers[-1].name


def extract_profiles(*args, progress: ProgressCallback | None = None, **kwargs) -> pd.DataFrame:
    """One row per crop: :func:`iter_extract_profiles` (same arguments) run to its end, its steps handed to
    ``progress``."""
    return drain(iter_extract_profiles(*args, **kwargs), progress)


def iter_extract_profiles(
    bundle,
    data: CropSet,
    *,
    layer: str | None = None,
    cam_layer: str | None = None,
    method: str = "gradcam",
    batch_size: int = 16,
    device: str | None = "auto",
    cancel: CancelToken | None = None,
) -> Steps[pd.DataFrame]:
    """One row per crop: ``data.info`` columns, prediction, Grad-CAMO scores and ``f_###`` features; one step
    per batch (a cancel acts between batches).

    Grad-CAM is computed at ``cam_layer`` (default: the model's target layer) for the predicted class, as
    the audit does; the features are ``layer``'s output averaged over space, from the same forward pass.
    """
    from napari_gradcamo.audit.batch import BatchCrops, score_batch
    from napari_gradcamo.audit.cam import CamEngine, get_module
    from napari_gradcamo.models.architectures import is_vae
    from napari_gradcamo.models.layers import default_target_layer, list_target_layers

    meta = bundle.metadata
    model = bundle.model
    n_in = len(meta.channel_names)
    layer = layer or (LATENT_MEAN_LAYER if is_vae(meta) else default_feature_layer(model, meta.crop_shape, n_in))
    cam_layer = cam_layer or meta.target_layer or default_target_layer(list_target_layers(model, meta.crop_shape, n_in))
    if data.masks is None:
        raise ValueError("Profiles need each crop's masks (CropSet.masks) to score Grad-CAMO.")
    info = data.info.reset_index(drop=True) if data.info is not None else pd.DataFrame(index=range(len(data)))
    captured: dict = {}
    rows, features = [], []
    n = len(data)
    with CamEngine(model, cam_layer, method, device, head=meta.head) as engine:
        handle = get_module(model, layer).register_forward_hook(
            lambda m, i, o: captured.__setitem__("x", _spatial_mean(o.detach().float()).cpu().numpy())
        )
        try:
            for start in range(0, n, batch_size):
                check(cancel, "the profiles")
                idx = np.arange(start, min(start + batch_size, n))
                codes = np.asarray(data.masks[idx])
                crops = BatchCrops(np.asarray(data.x[idx]), codes == MASK_CELL, codes == MASK_OTHER,
                                   [_padding(info, i) for i in idx])
                scored = score_batch(engine, crops, meta.normalization)
                features.append(captured.pop("x"))
                rows.extend(scored.result_columns(meta.class_names, method, cam_layer))
                yield (int(idx[-1]) + 1, n, f"{int(idx[-1]) + 1}/{n} cells")
        finally:
            handle.remove()
    feats = np.concatenate(features).astype(np.float32)
    width = max(3, len(str(feats.shape[1] - 1)))
    fcols = [f"{FEATURE_PREFIX}{k:0{width}d}" for k in range(feats.shape[1])]
    keep = [c for c in info.columns if c not in ("origin", "padding")]
    table = pd.concat([info[keep].reset_index(drop=True), pd.DataFrame(rows),
                       pd.DataFrame(feats, columns=fcols)], axis=1)
    if "padded_fraction" in table.columns:
        table.insert(table.columns.get_loc("padded_fraction"), "touches_border", table["padded_fraction"] > 0)
    table.attrs.update({"feature_layer": layer, "cam_layer": cam_layer, "cam_method": method})
    return table


def _spatial_mean(output):
    """A layer's output averaged over its spatial axes; (B, D) outputs (e.g. latent means) as they are."""
    return output if output.ndim == 2 else output.mean(dim=tuple(range(2, output.ndim)))


def dataset_class_names(meta) -> list[str]:
    """The treatment classes of the crops: a VAE's ``class_names`` name its latent units, so its checkpoint
    keeps the classes of its training crops in ``training.class_names``."""
    from napari_gradcamo.models.architectures import is_vae

    if is_vae(meta):
        names = meta.training.get("class_names") if isinstance(meta.training, dict) else None
        if not isinstance(names, list) or len(names) < 1 or not all(isinstance(n, str) for n in names):
            raise ValueError("This VAE checkpoint lacks training.class_names (the treatment classes of its crops).")
        return names
    return list(meta.class_names)


def _padding(info: pd.DataFrame, i: int):
    """Crop ``i``'s border padding ((before, after) per axis) from the flat list a crop set stores."""
    flat = info.loc[i, "padding"] if "padding" in info.columns else None
    if flat is None or len(flat) != 6:
        return None
    return tuple((int(flat[2 * a]), int(flat[2 * a + 1])) for a in range(3))


def feature_columns(table: pd.DataFrame, prefix: str = FEATURE_PREFIX) -> list[str]:
    return [c for c in table.columns if c.startswith(prefix)]


@dataclass
class Sphering:
    """A fitted sphering: which features were kept, the method used, and the transform."""

    columns: list[str]
    method: str
    n_fit: int
    _transform: object

    def transform(self, table: pd.DataFrame) -> np.ndarray:
        return self._transform(table[self.columns].to_numpy(np.float64))


def _zca_numpy(x: np.ndarray, floor: float):
    mean = x.mean(axis=0)
    std = x.std(axis=0, ddof=1)
    z = (x - mean) / std
    cov = np.cov(z, rowvar=False)
    values, vectors = np.linalg.eigh(cov)
    values = np.maximum(values, floor * max(values.max(), 1e-12))
    w = vectors @ np.diag(values**-0.5) @ vectors.T
    return lambda y: ((y - mean) / std) @ w


def fit_sphering(table: pd.DataFrame, fit_rows: np.ndarray, columns: Sequence[str] | None = None,
                 epsilon: float = 1e-6, floor: float = 1e-3) -> Sphering:
    """ZCA-cor sphering fitted on ``table``'s ``fit_rows`` (the control cells), pycytominer's ``Spherize``.

    Columns constant within the fit rows are dropped. When the controls are fewer than the features or their
    correlation matrix is near-singular (smallest eigenvalue < ``floor`` × largest), where ``Spherize`` would
    refuse the data or blow up noise directions by up to 1/√ε, a numpy ZCA-cor whose eigenvalues are floored
    at ``floor`` × the largest is used instead.
    """
    columns = list(columns) if columns is not None else feature_columns(table)
    fit = table.loc[np.asarray(fit_rows), columns].to_numpy(np.float64)
    if len(fit) < 3:
        raise ValueError(f"Sphering needs at least 3 control cells; got {len(fit)}.")
    varying = fit.std(axis=0) > 1e-12 * max(1.0, float(np.abs(fit).max()))
    columns = [c for c, v in zip(columns, varying) if v]
    if not columns:
        raise ValueError("Every feature is constant over the control cells; cannot sphere.")
    fit = fit[:, varying]
    eigen = np.linalg.eigvalsh(np.atleast_2d(np.corrcoef(fit, rowvar=False)))
    well_conditioned = len(fit) > len(columns) and eigen.min() > floor * eigen.max()
    transform = None
    if well_conditioned:
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pycytominer's import sets a pandas option deprecated in pandas 3
                from pycytominer.operations.transform import Spherize

            spherize = Spherize(epsilon=epsilon, center=True, method="ZCA-cor", return_numpy=True)
            spherize.fit(pd.DataFrame(fit, columns=columns))
            transform = lambda y: spherize.transform(pd.DataFrame(y, columns=columns))  # noqa: E731
            method = "pycytominer Spherize ZCA-cor"
        except ValueError:
            transform = None
    if transform is None:
        transform = _zca_numpy(fit, floor)
        method = "numpy ZCA-cor, eigenvalue floor (control set rank-deficient or too small)"
    return Sphering(columns, method, len(fit), transform)


def aggregate_wells(table: pd.DataFrame, columns: Sequence[str], how: str = "median") -> pd.DataFrame:
    """One row per plate/well: class, cell count, median Grad-CAMO and the ``how`` of each feature."""
    if how not in ("median", "mean"):
        raise ValueError("aggregate must be 'median' or 'mean'.")
    keys = ["plate", "well"]
    grouped = table.groupby(keys, sort=True)
    out = grouped.agg(n_cells=("label", "size"), gradcamo_median=("gradcamo", "median"),
                      **{"class": ("class", lambda s: s.mode().iat[0] if len(s.mode()) else "")})
    feats = getattr(grouped[list(columns)], how)()
    return pd.concat([out, feats], axis=1).reset_index()


def embed_umap(x: np.ndarray, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1) -> np.ndarray:
    """2D UMAP of ``x`` (rows = cells); NaN when there are fewer than 4 cells."""
    if len(x) < 4:
        return np.full((len(x), 2), np.nan)
    import umap

    reducer = umap.UMAP(n_components=2, n_neighbors=int(min(n_neighbors, len(x) - 1)), min_dist=min_dist,
                        random_state=seed, n_jobs=1, init="spectral" if len(x) > 10 else "random")
    return reducer.fit_transform(np.asarray(x, np.float32)).astype(np.float64)


def plot_umap(table: pd.DataFrame, out_dir: str | Path, stem: str = "umap") -> dict[str, Path]:
    """Three scatter plots of ``umap_1``/``umap_2``: by class, by site, by Grad-CAMO (PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    paths = {}
    xy = table[list(UMAP_COLUMNS)].to_numpy()
    for key, title in (("class", "class"), ("site", "site"), ("gradcamo", "Grad-CAMO")):
        fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=120)
        if key == "gradcamo":
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=table["gradcamo"], cmap="viridis", vmin=0, vmax=1, s=12)
            fig.colorbar(sc, ax=ax, label="Grad-CAMO")
        else:
            values = table[key].astype(str)
            for k, v in enumerate(sorted(values.unique())):
                sel = (values == v).to_numpy()
                ax.scatter(xy[sel, 0], xy[sel, 1], s=12, label=v, color=plt.cm.tab10(k % 10))
            ax.legend(title=title, fontsize=7, markerscale=1.5, loc="best")
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")
        ax.set_title(f"Single-cell profiles by {title}")
        fig.tight_layout()
        path = out_dir / f"{stem}_{key}.png"
        fig.savefig(path)
        plt.close(fig)
        paths[key] = path
    return paths


def profile_table(*args, progress=None, **kwargs) -> tuple[pd.DataFrame, dict]:
    """Features + Grad-CAMO per cell, sphered, with UMAP coordinates: :func:`iter_profile_table` (same
    arguments) run to its end, its steps handed to ``progress``."""
    return drain(iter_profile_table(*args, **kwargs), progress)


def iter_profile_table(bundle, data: CropSet, *, layer=None, cam_layer=None, control: str | None = None,
                       seed: int = 0, umap: bool = True, batch_size: int = 16, device="auto",
                       cancel=None) -> Steps[tuple[pd.DataFrame, dict]]:
    """Features + Grad-CAMO per cell, sphered on the control cells, with UMAP coordinates; returns (table, info).

    ``control``: the class whose cells fit the sphering (default: the model's first class); when no cell
    carries a class (one unlabelled image), the sphering is fitted on every cell and ``info`` says so.
    """
    table = yield from iter_extract_profiles(bundle, data, layer=layer, cam_layer=cam_layer, batch_size=batch_size,
                                             device=device, cancel=cancel)
    attrs = dict(table.attrs)
    classes = table["class"].astype(str) if "class" in table.columns else pd.Series([""] * len(table))
    control = control if control is not None else dataset_class_names(bundle.metadata)[0]
    fit_rows = np.flatnonzero((classes == control).to_numpy())
    fitted_on = f"control cells (class '{control}')"
    if (classes == "").all():
        fit_rows, fitted_on = np.arange(len(table)), "all cells (no class labels)"
    elif len(fit_rows) == 0:
        raise ValueError(f"No cells of the control class '{control}' to fit the sphering on; "
                         f"classes present: {sorted(set(classes))} (give --control).")
    sphering = fit_sphering(table, fit_rows)
    sphered = sphering.transform(table)
    scols = [f"{SPHERED_PREFIX}{c[len(FEATURE_PREFIX):]}" for c in sphering.columns]
    table = pd.concat([table, pd.DataFrame(sphered, columns=scols)], axis=1)
    if umap:
        yield (len(table), len(table), "UMAP (the first one in a process compiles numba code: ~1 min)")
        coords = embed_umap(sphered, seed=seed)
        table[UMAP_COLUMNS[0]], table[UMAP_COLUMNS[1]] = coords[:, 0], coords[:, 1]
    info = {**attrs, "sphering": sphering.method, "sphering_fitted_on": fitted_on,
            "sphering_cells": int(sphering.n_fit), "features": len(feature_columns(table)),
            "sphered_features": len(scols)}
    table.attrs.update(info)
    return table, info


def run_profiles(bundle, data: CropSet, out_dir: str | Path, *, layer=None, cam_layer=None, control=None,
                 batch_size: int = 16, device="auto", seed: int = 0, umap: bool = True, aggregate: str = "median",
                 progress=None, cancel=None) -> dict:
    """``gradcamo profile``: write ``cells.parquet``, ``wells.parquet``, ``umap.parquet`` and ``umap_*.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table, info = profile_table(bundle, data, layer=layer, cam_layer=cam_layer, control=control, seed=seed, umap=umap,
                                batch_size=batch_size, device=device, progress=progress, cancel=cancel)
    scols = feature_columns(table, SPHERED_PREFIX)
    wells = aggregate_wells(table, scols, aggregate)
    paths = {"cells_table": out / "cells.parquet", "wells_table": out / "wells.parquet"}
    table.attrs = {}
    table.to_parquet(paths["cells_table"], index=False)
    wells.to_parquet(paths["wells_table"], index=False)
    if umap:
        meta_cols = [c for c in ("image", "plate", "well", "site", "class", "label", "centroid_z", "centroid_y",
                                 "centroid_x", "predicted_class", "probability", "gradcamo", "chance") if c in table]
        paths["umap_table"] = out / "umap.parquet"
        table[meta_cols + list(UMAP_COLUMNS)].to_parquet(paths["umap_table"], index=False)
        paths.update({f"png_{k}": v for k, v in plot_umap(table, out).items()})
    summary = {"cells": int(len(table)), "wells": int(len(wells)), **info,
               "median_gradcamo": float(table["gradcamo"].median()),
               **{k: str(v) for k, v in paths.items()}}
    (out / "profile_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
