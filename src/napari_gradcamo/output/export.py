"""Export flagged cells (no Qt): the table, one OME-TIFF per cell and a PNG gallery.

Layout under the chosen folder (``stem`` defaults to ``gradcamo``)::

    gradcamo_table.csv / gradcamo_table.parquet   every row of the table (flagged column included),
                                                  plus crop_file and crop_origin_z/y/x for exported cells
    gradcamo_table.run.json                       the run record (checkpoint path + SHA-256 …), when given
    cells/cell_00007.ome.tif                      CZYX float32: the image channels, 'mask' (the cell, 1/0)
                                                  and 'gradcam' (the raw map on the crop grid); voxel size
                                                  and channel names in the OME metadata
    gallery/gallery_001.png                       per cell: max projection, mask outline, CAM overlay,
                                                  Grad-CAMO, chance and predicted class

Nothing is overwritten unless ``overwrite=True``: when any target file exists, :class:`ExportExistsError`
lists them before a single file is written.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from napari_gradcamo.crops.extract import crop_origin, window
from napari_gradcamo.io.atomic import write_with
from napari_gradcamo.io.images import Image, ImageError
from napari_gradcamo.output.provenance import describe
from napari_gradcamo.output.results import write_table
from napari_gradcamo.progress import CancelToken, ProgressCallback, Steps, check, drain

CELLS_DIR = "cells"
GALLERY_DIR = "gallery"
PANELS_PER_PAGE = 24
GALLERY_COLUMNS = 6


class ExportExistsError(FileExistsError):
    """Some files of the export already exist; nothing was written."""

    def __init__(self, existing: Sequence[Path]):
        self.existing = [Path(p) for p in existing]
        shown = ", ".join(str(p) for p in self.existing[:5])
        more = f" and {len(self.existing) - 5} more" if len(self.existing) > 5 else ""
        super().__init__(
            f"{len(self.existing)} file(s) of this export already exist ({shown}{more}); nothing was written. "
            "Choose an empty folder or allow overwriting."
        )


@dataclass
class ExportResult:
    """Where the export went."""

    folder: Path
    table_csv: Path
    table_parquet: Path
    cell_files: dict[int, Path] = field(default_factory=dict)
    gallery: list[Path] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        return [self.table_csv, self.table_parquet, *self.cell_files.values(), *self.gallery]

    def describe(self) -> str:
        return (
            f"Exported {len(self.cell_files)} cell(s) to {self.folder}: table {self.table_csv.name} "
            f"(+ .parquet), {len(self.cell_files)} OME-TIFF(s) in {CELLS_DIR}/, "
            f"{len(self.gallery)} gallery page(s) in {GALLERY_DIR}/."
        )


def _targets(folder: Path, stem: str, labels: Sequence[int], gallery: bool) -> tuple[Path, Path, dict[int, Path], list[Path]]:
    csv, parquet = folder / f"{stem}_table.csv", folder / f"{stem}_table.parquet"
    cells = {int(l): folder / CELLS_DIR / f"cell_{int(l):05d}.ome.tif" for l in labels}
    pages = int(np.ceil(len(labels) / PANELS_PER_PAGE)) if gallery else 0
    pngs = [folder / GALLERY_DIR / f"{stem}_gallery_{i + 1:03d}.png" for i in range(pages)]
    return csv, parquet, cells, pngs


def _cell_origin(row: pd.Series, cams: Mapping, crop_shape: Sequence[int]) -> tuple[int, int, int]:
    cam = cams.get(int(row["label"]))
    if cam is not None:
        return tuple(int(o) for o in cam.origin)
    return crop_origin((row["centroid_z"], row["centroid_y"], row["centroid_x"]), crop_shape)


def _checked_crop_shape(crop_shape, n_channels: int) -> tuple[int, int, int]:
    """``crop_shape`` as three whole numbers ≥ 1 whose cell stack fits in memory; a ValueError otherwise."""
    from napari_gradcamo.io.limits import check_allocation, nbytes

    shape = tuple(crop_shape) if isinstance(crop_shape, (tuple, list, np.ndarray)) else ()
    if len(shape) != 3 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1
                                  for s in shape):
        raise ValueError(f"crop_shape {crop_shape!r} must be three whole numbers z, y, x, each at least 1.")
    shape = tuple(int(s) for s in shape)
    # one cell's stack (stains + mask + map, float32) and its window of the image are held at once
    check_allocation(2 * nbytes((n_channels + 2, *shape), np.float32), f"A crop of {'×'.join(map(str, shape))} "
                     "voxels", ValueError, "pass a crop_shape near the cells' size (e.g. the model's crop)")
    return shape


def _cam_on_grid(cam, crop_shape: Sequence[int]) -> np.ndarray:
    if cam is None:
        return np.zeros(tuple(crop_shape), np.float32)
    return np.asarray(cam.on_crop_grid(), dtype=np.float32)


def write_cell_tiff(path: Path, pixels: np.ndarray, channel_names: Sequence[str], voxel_size: Sequence[float]) -> Path:
    """One ``CZYX`` float32 OME-TIFF with channel names and physical voxel size (µm)."""
    import tifffile

    z, y, x = (float(v) for v in voxel_size)
    metadata = {
        "axes": "CZYX",
        "PhysicalSizeX": x,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": y,
        "PhysicalSizeYUnit": "µm",
        "PhysicalSizeZ": z,
        "PhysicalSizeZUnit": "µm",
        "Channel": {"Name": list(channel_names)},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_with(path, lambda temp: tifffile.imwrite(
        temp, np.ascontiguousarray(pixels, dtype=np.float32), ome=True, photometric="minisblack",
        metadata=metadata, compression="zlib"))


def _display(pixels: np.ndarray) -> np.ndarray:
    """A grey max projection of all channels, each scaled to its 1st-99.8th percentile."""
    proj = pixels.max(axis=1)  # (C, y, x)
    out = np.zeros(proj.shape[1:], np.float32)
    for channel in proj:
        lo, hi = np.percentile(channel, [1.0, 99.8])
        if hi > lo:
            out += np.clip((channel - lo) / (hi - lo), 0, 1)
    return out / max(len(proj), 1)


def _fmt(value, digits: int = 3, unlike: float | None = None) -> str:
    """``value`` with ``digits`` decimals, more (up to 6) where it would otherwise read the same as ``unlike``
    (a score of 0.146 next to a threshold of 0.15 must not read "0.15")."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "–"
    if not np.isfinite(value):
        return "NaN"

    def shown(v: float, d: int) -> str:
        text = f"{v:.{d}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text  # never "-0.000"

    while unlike is not None and digits < 6 and value != unlike and shown(value, digits) == shown(unlike, digits):
        digits += 1
    return shown(value, digits)


def _flag_rule(run_record: dict | None, rule=None) -> tuple[str, float] | None:
    """(score, threshold) that made the table's ``flagged`` column: ``rule`` when given (a ``(score,
    threshold)`` pair, a ``{"on", "threshold"}`` dict or an object with ``on``/``threshold``: the rule set
    when exporting), else the one in the audit's run record."""
    if rule is not None:
        if isinstance(rule, dict):
            return str(rule["on"]), float(rule["threshold"])
        if hasattr(rule, "on"):
            return str(rule.on), float(rule.threshold)
        return str(rule[0]), float(rule[1])
    audit = ((run_record or {}).get("settings") or {}).get("audit") or {}
    try:
        return str(audit["flag_on"]), float(audit["threshold"])
    except (KeyError, TypeError, ValueError):
        return None


def _panel_text(row, label: int, has_cam: bool, rule: tuple[str, float] | None) -> str:
    lines = [f"cell {label} · Grad-CAMO {_fmt(row.get('gradcamo'))} (chance {_fmt(row.get('chance'))})"]
    if rule is not None and rule[0] in row:
        score, threshold = rule
        value = pd.to_numeric(row.get(score), errors="coerce")
        verdict = "flagged" if bool(row.get("flagged")) else "not flagged"
        if np.isfinite(value):
            sign = "<" if value < threshold else "≥"
            lines.append(f"{score} {_fmt(value, unlike=threshold)} {sign} {_fmt(threshold, unlike=value)}: {verdict}")
        else:
            lines.append(f"{score} undefined (empty map): {verdict}")
    lines.append(f"{row.get('predicted_class') or '?'} p={_fmt(row.get('probability'), 2)}"
                 + ("" if has_cam else " · no Grad-CAM"))
    return "\n".join(lines)


def _save_png(fig, path: Path) -> None:
    fig.savefig(path, format="png")


#: A gallery page is at least this wide (inches), so a one-cell page still has room for its title
GALLERY_MIN_WIDTH = 5.0


def gallery_figure(chunk: Sequence[dict], title: str = ""):
    """One gallery page as a matplotlib figure (constrained layout: panel titles never overlap the images
    above them, the page title is wrapped to the page's width)."""
    import textwrap

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(GALLERY_COLUMNS, max(len(chunk), 1))
    rows = int(np.ceil(len(chunk) / cols))
    width = max(2.3 * cols, GALLERY_MIN_WIDTH)
    title_lines = [wrapped for line in title.splitlines() for wrapped in textwrap.wrap(line, int(width * 13)) or [""]]
    fig = Figure(figsize=(width, 2.9 * rows + 0.2 + 0.16 * len(title_lines)), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle("\n".join(title_lines), fontsize=8)
    for i, panel in enumerate(chunk):
        ax = fig.add_subplot(rows, cols, i + 1)
        _draw_panel(ax, panel)
    return fig


def write_gallery(pages: Sequence[Path], panels: Sequence[dict], title: str = "") -> list[Path]:
    """Draw panels (dicts with image, mask, cam, text) on pages of :data:`PANELS_PER_PAGE`."""
    written = []
    for page, path in enumerate(pages):
        chunk = panels[page * PANELS_PER_PAGE : (page + 1) * PANELS_PER_PAGE]
        fig = gallery_figure(chunk, f"{title} (page {page + 1}/{len(pages)})" if title else "")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_with(path, functools.partial(_save_png, fig))
        written.append(path)
    return written


def _check_names(table: pd.DataFrame, stem) -> pd.Series:
    """Refuse a ``flagged`` column that is not boolean (the text 'False' is truthy) and a ``stem`` that is not
    a plain file name (``'../..'`` would write outside the export folder)."""
    flagged = table["flagged"]
    if flagged.dtype == object and all(isinstance(v, (bool, np.bool_)) for v in flagged):
        flagged = flagged.astype(bool)  # e.g. after a concat: Python booleans in an object column
    if not pd.api.types.is_bool_dtype(flagged.dtype) or flagged.isna().any():
        raise ValueError(f"The table's 'flagged' column has dtype {flagged.dtype}, not bool: text such as 'False' "
                         "would count as flagged. Convert it, e.g. table['flagged'] = table['flagged'].map("
                         "{'True': True, 'False': False}), or rebuild it with output.results.apply_threshold.")
    if not isinstance(stem, str) or not stem or stem in (".", "..") or Path(stem).name != stem or "\\" in stem \
            or "\0" in stem:
        raise ValueError(f"stem {stem!r} must be a plain file name (no folder, no '..'), e.g. 'gradcamo'; choose "
                         "the folder with out_dir.")
    return flagged.astype(bool)


def _draw_panel(ax, panel: dict) -> None:
    ax.imshow(panel["image"], cmap="gray", interpolation="nearest")
    cam = panel["cam"]
    if cam is not None and cam.max() > 0:
        shown = np.ma.masked_less_equal(cam / cam.max(), 0.05)
        ax.imshow(shown, cmap="inferno", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
    if panel["mask"].any():
        ax.contour(panel["mask"].astype(float), levels=[0.5], colors=["#00e5ff"], linewidths=1.0)
    ax.set_title(panel["text"], fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def export_flagged(*args, progress: ProgressCallback | None = None, **kwargs) -> ExportResult:
    """Export the table and, for each flagged cell (or every row), an OME-TIFF crop and a gallery panel:
    :func:`iter_export_flagged` (same arguments) run to its end, its steps handed to ``progress``.

    Parameters
    ----------
    *args, **kwargs
        As :func:`iter_export_flagged`: ``out_dir``, ``image``, ``labels``, ``table``, ``cams`` and the
        keywords ``only_flagged``, ``overwrite``, ``gallery``, ``stem``, ``run_record``, ``cancel``.
    progress : callable, optional
        Called as ``progress(done, total, message)`` after each cell.

    Returns
    -------
    ExportResult
        ``folder``, ``table_csv``, ``table_parquet``, ``cell_files`` (label → OME-TIFF) and ``gallery``
        (PNG pages).

    Raises
    ------
    ExportExistsError
        Files of an earlier export are in the way (nothing is written; pass ``overwrite=True``).

    Examples
    --------
    >>> import napari_gradcamo as ng
    >>> from napari_gradcamo.models.bundled import bundled_model_path
    >>> from napari_gradcamo.synthetic.experiment import demo_field
    >>> field = demo_field()
    >>> result = ng.run_audit(field.image, field.labels, ng.load_checkpoint(bundled_model_path("shortcut")))
    >>> out = ng.export_flagged("export", field.image, field.labels, result.table, result.cams,
    ...                         run_record=result.record)
    >>> out.table_csv.name, len(out.cell_files) == int(result.table["flagged"].sum())
    ('gradcamo_table.csv', True)
    """
    return drain(iter_export_flagged(*args, **kwargs), progress)


def iter_export_flagged(
    out_dir: str | Path,
    image: Image,
    labels: np.ndarray,
    table: pd.DataFrame,
    cams: Mapping | None = None,
    crop_shape: Sequence[int] | None = None,
    *,
    only_flagged: bool = True,
    overwrite: bool = False,
    gallery: bool = True,
    stem: str = "gradcamo",
    run_record: dict | None = None,
    flag_rule=None,
    cancel: CancelToken | None = None,
) -> Steps[ExportResult]:
    """The export of :func:`export_flagged` as steps, one per cell (a cancel acts between cells; the table
    is written last).

    ``cams`` maps label → :class:`~napari_gradcamo.audit.run.CellCam` (crop position and raw map);
    ``crop_shape`` (z, y, x) is needed only for cells without a CAM (default: the CAMs' crop shape).
    ``run_record``: the audit's provenance (:mod:`napari_gradcamo.output.provenance`): which checkpoint made
    the table; written beside the table and into its Parquet metadata. ``flag_rule``: the rule that set the
    table's ``flagged`` column (``(score, threshold)``, ``{"on", "threshold"}`` or a
    :class:`~napari_gradcamo.audit.labels_features.FlagRule`), stated on each gallery panel; default: the run
    record's. Every file is written atomically.
    Returns the paths written; raises :class:`ExportExistsError` (before writing) when files exist.
    """
    cams = dict(cams or {})
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[np.newaxis]
    if tuple(labels.shape) != image.spatial_shape:
        raise ImageError(f"Labels shape {tuple(labels.shape)} differs from the image's ZYX shape {image.spatial_shape}.")
    if "label" not in table or "flagged" not in table:
        raise ValueError("The table needs 'label' and 'flagged' columns (see napari_gradcamo.output.results.SCHEMA).")
    flagged = _check_names(table, stem)
    chosen = table[flagged] if only_flagged else table
    chosen = chosen.sort_values("label")
    if crop_shape is None:
        shapes = {tuple(c.crop_shape) for c in cams.values()}
        if len(shapes) > 1:
            raise ValueError(f"The CAMs have different crop shapes {sorted(shapes)}; pass crop_shape.")
        crop_shape = shapes.pop() if shapes else None
    if crop_shape is None and len(chosen):
        raise ValueError("No Grad-CAM maps were given, so the crop size is unknown: pass crop_shape (z, y, x).")
    if crop_shape is not None:
        crop_shape = _checked_crop_shape(crop_shape, len(image.channel_names))
    folder = Path(out_dir)
    ids = [int(l) for l in chosen["label"]]
    csv, parquet, cell_paths, pages = _targets(folder, stem, ids, gallery and bool(ids))
    record_json = csv.with_name(csv.stem + ".run.json") if run_record is not None else None
    existing = [p for p in [csv, parquet, record_json, *cell_paths.values(), *pages] if p is not None and p.exists()]
    if existing and not overwrite:
        raise ExportExistsError(existing)
    folder.mkdir(parents=True, exist_ok=True)

    out_table = table.copy()
    out_table["crop_file"] = ""
    for axis in "zyx":
        out_table[f"crop_origin_{axis}"] = np.nan
    names = [*image.channel_names, "mask", "gradcam"]
    rule = _flag_rule(run_record, flag_rule)
    panels = []
    total = len(chosen) + 1
    for done, (_, row) in enumerate(chosen.iterrows()):
        check(cancel, "the export")
        label = int(row["label"])
        origin = _cell_origin(row, cams, crop_shape)
        pixels, _ = window(image.data, origin, crop_shape)
        label_crop, _ = window(labels, origin, crop_shape)
        mask = (label_crop == label).astype(np.float32)
        cam = _cam_on_grid(cams.get(label), crop_shape)
        stack = np.concatenate([pixels.astype(np.float32), mask[None], cam[None]], axis=0)
        write_cell_tiff(cell_paths[label], stack, names, image.voxel_size)
        where = out_table["label"] == label
        out_table.loc[where, "crop_file"] = str(cell_paths[label].relative_to(folder))
        out_table.loc[where, ["crop_origin_z", "crop_origin_y", "crop_origin_x"]] = origin
        if gallery:
            panels.append({
                "image": _display(pixels),
                "mask": mask.max(axis=0) > 0,
                "cam": cam.max(axis=0) if label in cams else None,
                "text": _panel_text(row, label, label in cams, rule),
            })
        yield (done + 1, total, f"cell {label}")
    for column in ("crop_file",):
        out_table[column] = out_table[column].astype(str)
    write_table(out_table, folder, csv.stem, run_record)
    title = f"{Path(image.source).name or 'image'}: flagged cells" + (f"\n{describe(run_record)}" if run_record else "")
    written = write_gallery(pages, panels, title) if gallery and panels else []
    yield (total, total, f"exported {len(cell_paths)} cell(s)")
    return ExportResult(folder, csv, parquet, cell_paths, written)
