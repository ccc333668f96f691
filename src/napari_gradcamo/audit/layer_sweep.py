"""Grad-CAMO at several target layers from one forward and one backward pass, and the layer rule.

:class:`MultiLayerCam` hooks every chosen layer at once: the first layer to run is re-rooted (so the
backward pass stops there; weights are frozen), one backward pass of the explained scalar (the head's:
logit k, or ±z for a sigmoid-binary head, :mod:`napari_gradcamo.models.heads`) gives every layer's
gradient, and each layer's map is the CAM method's own formula (pytorch-grad-cam's ``get_cam_image``) —
the same map as :class:`~napari_gradcamo.audit.cam.CamEngine` with that method and layer.

:func:`choose_layer` is the rule ``gradcamo train`` stores the default layer by (docs/interpreting-scores.md):
on validation crops, hide the top :data:`DELETION_FRACTION` of each crop's voxels ranked by a layer's map
(replaced by the crop's background level) and keep the layer whose maps cost the true class the most
probability — the layer whose map best points at what the decision depends on. It never looks at the
masks' position, so it cannot favour layers that make a model look honest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from napari_gradcamo.audit.batch import ScoredBatch, batch_of
from napari_gradcamo.audit.cam import (
    CAM_METHODS,
    CAM_METHODS_2D,
    FALLBACK_METHODS,
    cam_class,
    get_module,
    per_crop,
    pick_device,
    planes_as_images,
    upsample,
)
from napari_gradcamo.audit.occlusion import background_levels, occlusion_drops
from napari_gradcamo.audit.run import AuditSettings, audit_crop_shape, cell_rows, prepare, resolve_target_class
from napari_gradcamo.audit.scoring import ZERO_MAP_REASON, inside_image_mask, score_cam
from napari_gradcamo.crops.extract import extract_crop
from napari_gradcamo.crops.resample import image_crop_shape, mask_outside_cell, needs_resampling, resample_crops
from napari_gradcamo.models.checkpoint import normalize_crops
from napari_gradcamo.models.layers import all_module_outputs, check_target_layer, model_spatial_dims
from napari_gradcamo.output import results
from napari_gradcamo.progress import CancelToken, ProgressCallback, check, report

#: Share of a crop's voxels hidden per layer by :func:`choose_layer`.
DELETION_FRACTION = 0.1


def candidate_layers(model, crop_shape: Sequence[int], in_channels: int) -> list[str]:
    """What a sweep and the verdict try by default: the top-level layers whose feature map still has more
    than one row and column; a container (``nn.Sequential``/``ModuleList``/``ModuleDict``) whose own output
    has none (EfficientNet's ``_blocks``) is replaced by its direct children that do, and so on down."""
    import torch.nn as nn

    containers = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    ran = {l.name: l for l in all_module_outputs(model, crop_shape, in_channels)}
    layers = {n: l for n, l in ran.items() if l.spatial}

    def usable(info) -> bool:
        grid = info.output_shape[1:]
        return len(grid) >= 2 and min(grid[-2:]) > 1

    def walk(module, prefix: str) -> list[str]:
        found = []
        for child, sub in module.named_children():
            name = f"{prefix}{child}"
            info = layers.get(name)
            if info is not None and usable(info):
                found.append(name)
            elif (name not in ran or isinstance(sub, containers)) and any(n.startswith(name + ".") for n in layers):
                found.extend(walk(sub, name + "."))
        return found

    return walk(model, "")


class MultiLayerCam:
    """Raw Grad-CAM maps at several layers in one pass. A context manager: freezes weights, hooks layers.

    A 2D model sees each z-plane of a crop as its own image, as in :class:`~napari_gradcamo.audit.cam.CamEngine`:
    its planes' probabilities are averaged per crop, every plane's map explains the crop's target class, and
    the maps are stacked back along z."""

    def __init__(self, model, layers: Sequence[str], device=None, head: str = "softmax", method: str = "gradcam"):
        if not layers:
            raise ValueError("Give at least one layer to sweep.")
        self.spatial_dims = model_spatial_dims(model)
        key = method.lower().replace("_", "").replace("-", "") if isinstance(method, str) else method
        if self.spatial_dims == 2 and key in CAM_METHODS_2D:
            raise ValueError(f"CAM method '{method}' perturbs the input once per layer, so the layer sweep (and "
                             f"the verdict) cannot explain every layer from one pass with it; use one of "
                             f"{', '.join(CAM_METHODS)}, or audit one layer at a time with it (--layer).")
        self.model, self.layers, self.device = model, list(layers), pick_device(device)
        self.head, self.method = head, method
        self._outputs: dict[str, object] = {}
        self._handles, self._flags = [], []
        self._cam = None
        self._fallbacks: dict[str, object] = {}
        self.last_methods: dict[str, list[str]] = {}

    def __enter__(self) -> "MultiLayerCam":
        self.model.to(self.device).eval()
        params = list(self.model.parameters())
        self._flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)
        for name in self.layers:
            self._handles.append(get_module(self.model, name).register_forward_hook(self._keeper(name)))
        # pytorch-grad-cam's own map formula for the method; its hooks are released at once (ours feed it)
        self._cam = cam_class(self.method, self.spatial_dims)(self.model, [get_module(self.model, self.layers[0])])
        self._cam.activations_and_grads.release()
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for p, flag in zip(self.model.parameters(), self._flags):
            p.requires_grad_(flag)
        self._outputs.clear()

    def _keeper(self, name: str):
        def keep(module, inputs, output):
            if not output.requires_grad:  # the first hooked layer to run: the backward pass stops here
                output = output.detach().requires_grad_(True)
            self._outputs[name] = output
            # the layers after see a copy: an in-place op there (DenseNet's ReLU(inplace=True)) would otherwise
            # change the kept activations, or fail on the leaf ("a leaf Variable … used in an in-place operation")
            return output.clone()
        return keep

    def compute(self, batch: np.ndarray, target_classes: Sequence[int | None] | None = None):
        """Return (probabilities (B, K), targets (B,), {layer: raw maps (B, z', y', x') ≥ 0}), the
        probabilities and explained scalar as the model's head means them (:mod:`~napari_gradcamo.models.heads`);
        ``batch`` is (B, C, z, y, x) (a 2D model: plane by plane, maps (B, z, y', x'))."""
        import torch

        from napari_gradcamo.models.heads import chosen_targets, explained, probabilities, targets_for

        self._outputs.clear()
        x = torch.as_tensor(batch, dtype=torch.float32, device=self.device)
        n, planes = x.shape[0], x.shape[2]
        x = planes_as_images(x, self.spatial_dims)
        with torch.enable_grad():
            logits = self.model(x)
            probs = per_crop(probabilities(self.head, logits), n, self.spatial_dims)
            targets = chosen_targets(probs, target_classes)
            per_row = np.repeat(targets, planes) if self.spatial_dims == 2 else targets
            missing = [n for n in self.layers if n not in self._outputs]
            if missing:
                raise ValueError(f"The layers {missing} did not run in the model's forward pass.")
            activations = [self._outputs[n] for n in self.layers]
            if self._cam.uses_gradients:
                grads = torch.autograd.grad(explained(self.head, logits, per_row).sum(), activations,
                                            allow_unused=True)
            else:
                grads = [None] * len(activations)
        maps = {}
        wanted = targets_for(self.head, per_row)
        self.last_methods = {}
        for name, a, g in zip(self.layers, activations, grads):
            acts = a.detach().float().cpu().numpy()
            grad = (np.zeros_like(acts) if g is None else g.float().cpu().numpy()) if self._cam.uses_gradients else None
            module = get_module(self.model, name)
            raw = np.maximum(np.asarray(self._cam.get_cam_image(x, module, wanted, acts, grad, False), np.float32), 0.0)
            if self.spatial_dims == 2:
                raw = raw.reshape(n, planes, *raw.shape[1:])
            maps[name], self.last_methods[name] = self._fall_back(raw, x, module, wanted, acts, grad)
        self._outputs.clear()
        return probs, targets, maps

    def _fall_back(self, raw, x, module, wanted, acts, grad):
        """As :class:`~napari_gradcamo.audit.cam.CamEngine`: a crop whose map is zero everywhere gets the first
        :data:`~napari_gradcamo.audit.cam.FALLBACK_METHODS` map that is not; returns (maps, method per crop)."""
        n = len(raw)
        zero = raw.reshape(n, -1).sum(1) <= 0
        methods = [self.method] * n
        if zero.any() and grad is not None:
            for other in FALLBACK_METHODS:
                if other == self.method or not zero.any():
                    continue
                if other not in self._fallbacks:
                    cam = cam_class(other, self.spatial_dims)(self.model, [module])
                    cam.activations_and_grads.release()
                    self._fallbacks[other] = cam
                alt = np.maximum(np.asarray(self._fallbacks[other].get_cam_image(x, module, wanted, acts, grad, False),
                                            np.float32), 0.0).reshape(raw.shape)
                use = zero & (alt.reshape(n, -1).sum(1) > 0)
                raw[use] = alt[use]
                for i in np.flatnonzero(use):
                    methods[i] = other
                zero &= ~use
        return raw, ["" if z else m for z, m in zip(zero, methods)]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (B, K) of a normalised batch (no maps, no backward pass; a 2D model's planes
        averaged per crop, as in :meth:`compute`)."""
        import torch

        from napari_gradcamo.models.heads import probabilities

        x = torch.as_tensor(batch, dtype=torch.float32, device=self.device)
        with torch.no_grad():
            logits = self.model(planes_as_images(x, self.spatial_dims))
        self._outputs.clear()
        return per_crop(probabilities(self.head, logits), len(x), self.spatial_dims)


def sweep_crop_shape(bundle, settings: AuditSettings, image) -> tuple[int, ...]:
    """The crop (z, y, x) each cell is cut at in ``image``, as the single-layer audit cuts it: the model's crop
    in µm (``settings.planes`` deep for a 2D model); the checkpoint's crop when the voxel sizes agree."""
    meta = bundle.metadata
    dims = model_spatial_dims(bundle.model)
    return image_crop_shape(audit_crop_shape(bundle, settings), meta.voxel_size, image.voxel_size, dims)


def _model_input(bundle, settings: AuditSettings, image):
    """``f(raw crops, cell masks)``: raw crops as the model takes them, as in the single-layer audit
    (:func:`~napari_gradcamo.audit.batch.score_batch`): normalised, masked to the cell when the checkpoint's
    ``crop_mode`` is "masked", resampled to the model's crop when the voxel sizes differ. Occluded copies (a
    multiple of the batch) are masked with their own crop's cell."""
    meta = bundle.metadata
    dims = model_spatial_dims(bundle.model)
    model_crop = audit_crop_shape(bundle, settings)
    resample_to = model_crop if needs_resampling(meta.voxel_size, image.voxel_size, dims) else None

    def as_model_input(raw: np.ndarray, cell_masks: np.ndarray) -> np.ndarray:
        batch = normalize_crops(raw, meta.normalization)
        if meta.crop_mode == "masked":
            masks = np.concatenate([cell_masks] * (len(batch) // len(cell_masks)))
            batch = mask_outside_cell(batch, masks, meta.padding_value)
        return batch if resample_to is None else resample_crops(batch, resample_to)

    return as_model_input


@dataclass
class SweepBatch:
    """Rows per layer for the cells finished in one batch, with overall progress."""

    tables: dict[str, pd.DataFrame]
    done: int
    total: int


def iter_sweep(image, labels: np.ndarray, bundle, layers: Sequence[str] | None = None,
               settings: AuditSettings | None = None, cancel: CancelToken | None = None,
               only_labels: Sequence[int] | None = None, reference_levels: Sequence[float] | None = None
               ) -> Iterator[SweepBatch]:
    """Audit every cell at every layer of ``layers`` (default :func:`candidate_layers`), batch by batch, with
    ``settings.method`` and the model's head; ``settings.occlusion`` adds the occlusion drops (one pair per
    cell, the same at every layer: the occlusion does not depend on the layer); ``reference_levels`` (one
    level per model channel, raw units) adds the drop with the *medium* hidden (every voxel in no cell; the
    neighbouring cells stay), and both drops again with hidden voxels filled with those levels instead of
    each crop's own background level (columns ``drop_medium_occluded``, ``drop_cell_reference``,
    ``drop_medium_reference``).

    Cells are cut and fed as the single-layer audit does (:func:`sweep_crop_shape`: the model's crop in µm,
    masked crops, a 2D model plane by plane with ``settings.planes``), so each layer's rows equal
    ``run_audit``'s at that layer."""
    settings = settings or AuditSettings()
    settings.validate()
    meta = bundle.metadata
    model_image, _, cells = prepare(image, labels, bundle, settings)
    if only_labels is not None:
        wanted = {int(label) for label in only_labels}
        cells = [c for c in cells if c.label in wanted]
    model_crop = tuple(meta.crop_shape)
    crop_shape = sweep_crop_shape(bundle, settings, model_image)
    as_model_input = _model_input(bundle, settings, model_image)
    n_in = len(meta.channel_names)
    if layers:
        layers = list(layers)
        for name in layers:
            check_target_layer(bundle.model, name, model_crop, n_in)
    else:
        layers = candidate_layers(bundle.model, model_crop, n_in)
    target = resolve_target_class(settings.target_class, meta.class_names)
    step = max(1, int(settings.batch_size))
    with MultiLayerCam(bundle.model, layers, settings.device, head=meta.head, method=settings.method) as cams:
        for start in range(0, len(cells), step):
            check(cancel, "the layer sweep")
            chunk = cells[start: start + step]
            cell_crops = [extract_crop(model_image, labels, c, crop_shape) for c in chunk]
            crops = batch_of(cell_crops)
            probs, targets, maps = cams.compute(as_model_input(crops.images, crops.cell_masks), [target] * len(chunk))
            inside = [inside_image_mask(crop_shape, pad) if pad is not None else None for pad in crops.paddings]
            drops, reference = None, None
            normalize = lambda raw, masks=crops.cell_masks: as_model_input(raw, masks)  # noqa: E731
            if settings.occlusion:
                inside_all = np.stack([np.ones(crop_shape, bool) if i is None else i for i in inside])
                drops = occlusion_drops(cams.predict, crops.images, crops.cell_masks, crops.other_masks, targets,
                                        probs, normalize, inside_all)
            if reference_levels is not None:
                inside_all = np.stack([np.ones(crop_shape, bool) if i is None else i for i in inside])
                levels = np.broadcast_to(np.asarray(reference_levels, np.float64)[None], crops.images.shape[:2])
                cells_all = crops.cell_masks | crops.other_masks  # hiding "all but these" hides the medium only
                medium = occlusion_drops(cams.predict, crops.images, cells_all, crops.other_masks, targets, probs,
                                         normalize, inside_all)[1]
                cell_ref, _ = occlusion_drops(cams.predict, crops.images, crops.cell_masks, crops.other_masks,
                                              targets, probs, normalize, levels=levels)
                medium_ref = occlusion_drops(cams.predict, crops.images, cells_all, crops.other_masks, targets, probs,
                                             normalize, levels=levels)[1]
                reference = {"drop_medium_occluded": medium, "drop_cell_reference": cell_ref,
                             "drop_medium_reference": medium_ref}
            tables = {}
            for name in layers:
                grid = upsample(maps[name], crop_shape)
                scores = [score_cam(m, cell, other, ins)
                          for m, cell, other, ins in zip(grid, crops.cell_masks, crops.other_masks, inside)]
                used = cams.last_methods.get(name)
                tried = ", ".join([settings.method, *[f for f in FALLBACK_METHODS if f != settings.method]])
                for sc, u in zip(scores, used or []):
                    if not u and sc.reason == ZERO_MAP_REASON:
                        sc.reason = f"{ZERO_MAP_REASON}: {tried} all give zero maps (the method found no evidence; not a flag)"
                scored = ScoredBatch(probs, targets, maps[name], scores, drops, used)
                tables[name] = cell_rows(cell_crops, chunk, scored, meta, settings, name)
                if reference is not None:
                    tables[name] = tables[name].assign(**reference)
            yield SweepBatch(tables, start + len(chunk), len(cells))


def run_sweep(image, labels: np.ndarray, bundle, layers: Sequence[str] | None = None,
              settings: AuditSettings | None = None, progress: ProgressCallback | None = None,
              cancel: CancelToken | None = None, only_labels: Sequence[int] | None = None,
              reference_levels: Sequence[float] | None = None) -> dict[str, pd.DataFrame]:
    """:func:`iter_sweep` to the end: one results table per layer (``only_labels``: those cells only)."""
    parts: dict[str, list] = {}
    for batch in iter_sweep(image, labels, bundle, layers, settings, cancel, only_labels, reference_levels):
        for name, table in batch.tables.items():
            parts.setdefault(name, []).append(table)
        report(progress, batch.done, batch.total, f"{batch.done}/{batch.total} cells")
    names = bundle.metadata.class_names
    return {name: results.conform(pd.concat(tables, ignore_index=True), names) for name, tables in parts.items()}


def sweep_summary(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """:func:`~napari_gradcamo.output.results.summary` per layer: one row each."""
    return pd.DataFrame([{"layer": name, **results.summary(t)} for name, t in tables.items()])


def plot_sweep(tables: dict[str, pd.DataFrame], path, score: str = "normalised", title: str = "") -> None:
    """A PNG of the distribution of ``score`` per layer (one box and the cells as dots per layer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(tables)
    values = [tables[n][score].dropna().to_numpy() for n in names]
    fig, ax = plt.subplots(figsize=(1.8 + 1.3 * len(names), 3.6))
    ax.boxplot(values, showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names)
    rng = np.random.default_rng(0)
    for i, v in enumerate(values, start=1):
        ax.plot(i + rng.uniform(-0.15, 0.15, len(v)), v, ".", alpha=0.5, color="tab:blue", ms=3)
    chance_line = {"normalised": 0.0, "lift": 1.0}.get(score)
    if chance_line is not None:
        ax.axhline(chance_line, color="grey", ls="--", lw=1, label="chance (uniform map)")
        ax.legend(loc="best", fontsize=8)
    ax.set_ylabel(score)
    ax.set_xlabel("target layer")
    ax.set_title(title or f"{score} per layer")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def deletion_drops(model, images: np.ndarray, masks: np.ndarray, targets: np.ndarray, normalization: dict,
                   layers: Sequence[str], fraction: float = DELETION_FRACTION, batch_size: int = 32,
                   device=None, head: str = "softmax") -> pd.DataFrame:
    """Per crop and layer: the drop in the target class's probability when the ``fraction`` of voxels
    its map ranks highest are replaced by the crop's background level (``masks``: 0 background, 1 the
    cell, 2 other cells, as :attr:`~napari_gradcamo.crops.datasets.CropSet.masks`)."""
    records = []
    with MultiLayerCam(model, layers, device, head=head) as cams:
        for start in range(0, len(images), batch_size):
            raw = np.asarray(images[start: start + batch_size], dtype=np.float32)
            code = np.asarray(masks[start: start + batch_size])
            tgt = np.asarray(targets[start: start + batch_size], dtype=int)
            probs, _, maps = cams.compute(normalize_crops(raw, normalization), tgt)
            levels = background_levels(raw, code == 1, code == 2)
            fill = levels[:, :, None, None, None].astype(np.float32)
            k = max(1, int(round(fraction * np.prod(raw.shape[2:]))))
            for name in layers:
                grid = upsample(maps[name], raw.shape[2:]).reshape(len(raw), -1)
                top = np.zeros_like(grid, dtype=bool)
                np.put_along_axis(top, np.argsort(-grid, axis=1)[:, :k], True, axis=1)
                hidden = np.where(top.reshape((len(raw), 1) + raw.shape[2:]), fill, raw)
                after = cams.predict(normalize_crops(hidden, normalization))
                rows = np.arange(len(raw))
                for i, drop in enumerate(probs[rows, tgt] - after[rows, tgt]):
                    records.append({"crop": start + i, "layer": name, "deletion_drop": float(drop)})
    return pd.DataFrame(records)


def choose_layer(model, images: np.ndarray, masks: np.ndarray, targets: np.ndarray, normalization: dict,
                 crop_shape: Sequence[int], layers: Sequence[str] | None = None, device=None,
                 head: str = "softmax") -> tuple[str, dict]:
    """The rule: the candidate layer with the largest mean :func:`deletion_drops` on these (validation)
    crops of their true class. Returns (layer, {layer: mean drop})."""
    layers = list(layers) if layers else candidate_layers(model, crop_shape, images.shape[1])
    if not layers:
        raise ValueError(f"The model has no layer with a {model_spatial_dims(model)}D feature map of more than one "
                         "row and column.")
    drops = deletion_drops(model, images, masks, targets, normalization, layers, device=device, head=head)
    means = drops.groupby("layer", sort=False)["deletion_drop"].mean().to_dict()
    best = max(layers, key=lambda n: means[n])
    return best, {n: float(means[n]) for n in layers}
