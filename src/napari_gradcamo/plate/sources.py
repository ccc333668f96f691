"""The fields of a plate, from a manifest CSV, a folder of fields or an OME-Zarr HCS plate.

A *layout* CSV (columns ``well``, optional ``plate``, ``treatment``, ``dose``) names each well's treatment and
dose when the source does not (folders and HCS plates); a manifest's ``class`` column is the treatment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from napari_gradcamo.io.images import ImageError
from napari_gradcamo.io.lazy import TIFF_SUFFIXES, is_zarr
from napari_gradcamo.segment.field_list import ManifestError, blank, read_manifest

_FIELD_NAME = re.compile(r"^(?P<plate>.+?)_(?P<well>[A-Za-z]{1,2}\d{1,3})_s(?P<site>\d+)$")
_MASK_SUFFIX = "_masks"


@dataclass(frozen=True)
class FieldTask:
    """One field to audit: its place in the plate, its image and (optional) masks file, its treatment."""

    plate: str
    well: str
    site: int
    image: str
    masks: str = ""
    treatment: str = ""
    dose: str = ""
    axes: str = ""
    channel_names: str = ""

    @property
    def field_id(self) -> str:
        return f"{self.plate}/{self.well}/{self.site}"

    def metadata(self) -> dict:
        return {"plate": self.plate, "well": self.well, "site": self.site, "field": self.field_id,
                "treatment": self.treatment, "dose": self.dose}


def discover(source: str | Path, layout: str | Path | None = None) -> list[FieldTask]:
    """Every field of ``source`` (manifest ``.csv``, OME-Zarr plate, or a folder of fields), layout applied."""
    source = Path(source)
    if not source.exists():
        raise ImageError(f"Plate source {source} does not exist; give a manifest CSV, a folder or an OME-Zarr plate.")
    if source.suffix.lower() == ".csv":
        tasks = _from_manifest(source)
    elif is_zarr(source):
        tasks = _from_hcs(source)
    elif source.is_dir():
        tasks = _from_folder(source)
    else:
        raise ImageError(f"{source} is neither a manifest CSV, an OME-Zarr plate nor a folder of fields.")
    if layout is not None:
        tasks = apply_layout(tasks, read_layout(layout))
    ids = [t.field_id for t in tasks]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ImageError(f"Fields {duplicates[:5]} appear more than once in {source.name}; give each a unique site.")
    return tasks


def plate_geometry(source: str | Path) -> dict[str, dict[str, list[str]]]:
    """``{plate name: {"rows": [...], "columns": [...]}}`` as an OME-Zarr HCS plate declares them (in order);
    empty for manifests and folders, which declare none."""
    source = Path(source)
    if not (source.exists() and is_zarr(source)):
        return {}
    from napari_gradcamo.io.ome_zarr import ome_attrs, open_group

    plate = ome_attrs(open_group(source)).get("plate")
    if not isinstance(plate, dict):
        return {}
    names = [[str(e.get("name")) for e in plate.get(key) or [] if isinstance(e, dict) and e.get("name") is not None]
             for key in ("rows", "columns")]
    if not all(names):
        return {}
    return {str(plate.get("name") or source.name.split(".")[0]): {"rows": names[0], "columns": names[1]}}


def _from_manifest(path: Path) -> list[FieldTask]:
    try:
        table = read_manifest(path)
    except ManifestError as error:
        raise ImageError(str(error)) from error
    optional = lambda row, column: "" if column not in row.index or blank(row[column]) else str(row[column]).strip()  # noqa: E731
    return [FieldTask(str(row["plate"]) or path.stem, str(row["well"]), int(row["site"]), str(row["image"]),
                      optional(row, "masks"), str(row["class"]), optional(row, "dose"), optional(row, "axes"),
                      optional(row, "channel_names")) for _, row in table.iterrows()]


def _from_hcs(path: Path) -> list[FieldTask]:
    from napari_gradcamo.io.ome_zarr import read_plate

    _, fields = read_plate(path)
    return [FieldTask(f.plate, f.well, f.site, str(f.path)) for f in fields]


def _from_folder(folder: Path) -> list[FieldTask]:
    """Images named ``PLATE_WELL_sSITE`` (else plate = folder, well = file stem, site 1); masks beside them
    as ``<stem>_masks.tif``, or inside an OME-Zarr image's ``labels`` group."""
    tasks = []
    for path in sorted(folder.iterdir()):
        stem = path.name.split(".")[0]
        if stem.endswith(_MASK_SUFFIX) or not (is_zarr(path) or path.suffix.lower() in TIFF_SUFFIXES):
            continue
        masks = next((str(m) for m in (folder / f"{stem}{_MASK_SUFFIX}.tif", folder / f"{stem}{_MASK_SUFFIX}.tiff")
                      if m.exists()), "")
        match = _FIELD_NAME.match(stem)
        plate, well, site = (match["plate"], match["well"].upper(), int(match["site"])) if match else (folder.name, stem, 1)
        tasks.append(FieldTask(plate, well, site, str(path), masks))
    if not tasks:
        raise ImageError(f"{folder} holds no TIFF or OME-Zarr fields.")
    return tasks


def read_layout(path: str | Path) -> pd.DataFrame:
    """A plate layout CSV: ``well`` (required), ``plate``, ``treatment``, ``dose``."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"Layout {path} does not exist.")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.columns = [c.strip().lower() for c in table.columns]
    if "well" not in table.columns or not ({"treatment", "dose"} & set(table.columns)):
        raise ImageError(f"Layout {path.name} needs a 'well' column and a 'treatment' and/or 'dose' column.")
    for column in ("plate", "treatment", "dose"):
        if column not in table.columns:
            table[column] = ""
    table["well"] = table["well"].str.strip().str.upper()
    return table


def apply_layout(tasks: list[FieldTask], layout: pd.DataFrame) -> list[FieldTask]:
    """Fill treatment and dose from the layout (a row with an empty plate applies to every plate)."""
    by_key = {(str(r["plate"]), str(r["well"])): r for _, r in layout.iterrows()}
    out = []
    for task in tasks:
        row = by_key.get((task.plate, task.well.upper()), by_key.get(("", task.well.upper())))
        if row is None:
            out.append(task)
            continue
        out.append(FieldTask(**{**task.__dict__, "treatment": str(row["treatment"]) or task.treatment,
                                "dose": str(row["dose"]) or task.dose}))
    return out
