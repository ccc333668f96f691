"""``gradcamo virtual-stain synthetic | train | predict | evaluate``: stains from brightfield by diffusion."""

from __future__ import annotations

import json
from pathlib import Path

from napari_gradcamo.cli._common import (
    check_device,
    device_name,
    finite_float,
    non_negative_int,
    positive_float,
    positive_int,
    progress_bar,
)


def _training_pairs(args, class_names=None):
    """Pairs from ``--manifest`` or fresh synthetic fields (``--synthetic N``)."""
    from napari_gradcamo.virtual_stain.data import synthetic_pairs
    from napari_gradcamo.virtual_stain.files import read_pairs
    from napari_gradcamo.virtual_stain.model import VirtualStainError

    if args.manifest:
        return read_pairs(args.manifest, class_names)
    if not args.synthetic:
        raise VirtualStainError("give a --manifest of paired TIFFs or --synthetic N (number of synthetic fields).")
    names = list(class_names) if class_names else [f"class{k}" for k in range(args.classes)]
    return synthetic_pairs(args.data_seed, args.synthetic, len(names), first_well=args.first_well), names


def cmd_synthetic(args) -> int:
    from napari_gradcamo.virtual_stain.files import write_synthetic_pairs

    path = write_synthetic_pairs(args.out, seed=args.seed, n_fields=args.fields, n_classes=args.classes,
                                 first_well=args.first_well)
    print(json.dumps({"manifest": str(path)}, indent=2))
    return 0


def _new_output(args) -> Path:
    """``--out``, refused if it exists and ``--overwrite`` was not given."""
    from napari_gradcamo.virtual_stain.model import VirtualStainError

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise VirtualStainError(f"{out} exists; choose another --out or pass --overwrite.")
    return out


def cmd_train(args) -> int:
    from napari_gradcamo.synthetic.brightfield import DEFAULT_DEFOCUS_UM
    from napari_gradcamo.virtual_stain.checkpoint import save_model
    from napari_gradcamo.virtual_stain.pipeline import FitSettings, fit_model

    out = _new_output(args)
    check_device(args.device)  # before any data is read
    settings = FitSettings(labelled=not args.unlabelled, steps=args.steps, classifier_steps=args.classifier_steps,
                           crop=args.crop, batch=args.batch_size, lr=args.lr, widths=args.widths, seed=args.seed,
                           device=args.device)
    settings.validate()
    pairs, names = _training_pairs(args)
    bar, update = progress_bar("virtual-stain train")
    try:
        model = fit_model(pairs, names, settings, defocus_um=args.defocus or DEFAULT_DEFOCUS_UM, progress=update)
    finally:
        bar.close()
    save_model(out, model, overwrite=args.overwrite)
    print(json.dumps({"checkpoint": str(out), "classes": names, "labelled": model.labelled,
                      "guidance_classifier": model.classifier is not None, **model.training}, indent=2))
    return 0


def cmd_predict(args) -> int:
    import numpy as np
    import tifffile

    from napari_gradcamo.virtual_stain.checkpoint import load_model
    from napari_gradcamo.virtual_stain.files import read_tiff
    from napari_gradcamo.virtual_stain.model import VirtualStainError

    out = _new_output(args)
    check_device(args.device)
    model = load_model(args.model)
    klass = None
    if args.klass is not None:
        if args.klass in model.class_names:
            klass = model.class_names.index(args.klass)
        elif args.klass.isdigit():
            klass = int(args.klass)
        else:
            raise VirtualStainError(f"unknown class {args.klass!r}; the model knows {model.class_names}.")
    brightfield = read_tiff(Path(args.brightfield), (2, 3), "brightfield")
    bar, update = progress_bar("virtual-stain predict")
    try:
        stains = model.predict_image(brightfield, klass=klass, guidance_scale=args.guidance_scale,
                                     sampler=args.sampler, steps=args.steps, seed=args.seed, device=args.device,
                                     progress=update)
    finally:
        bar.close()
    tmp = out.with_name(f".{out.name}.tmp")
    tifffile.imwrite(tmp, stains.astype(np.float32), photometric="minisblack", metadata={"axes": "CYX", "channels": model.stain_names})
    tmp.replace(out)
    print(json.dumps({"stains": str(out), "channels": model.stain_names, "shape": list(stains.shape)}, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from napari_gradcamo.virtual_stain.checkpoint import load_model
    from napari_gradcamo.virtual_stain.data import cell_crops
    from napari_gradcamo.virtual_stain.files import write_json
    from napari_gradcamo.virtual_stain.model import VirtualStainError
    from napari_gradcamo.virtual_stain.pipeline import evaluate_model

    out = _new_output(args)
    check_device(args.device)
    model = load_model(args.model)
    pairs, _ = _training_pairs(args, model.class_names)
    if not all(p.labels.any() for p in pairs):
        raise VirtualStainError("evaluation needs cell labels for every image (a 'labels' column in the manifest).")
    crops = cell_crops(pairs, model.scaling, args.crop, per_field=args.cells_per_image)
    bar, update = progress_bar("virtual-stain evaluate", "condition")
    try:
        rows = evaluate_model(model, crops, guidance_scales=args.guidance_scale, steps=args.steps, seed=args.seed,
                              device=args.device, progress=update)
    finally:
        bar.close()
    write_json(out, {"model": str(args.model), "n_images": len(pairs), "rows": rows})
    for row in rows:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}))
    return 0


def _data_options(p, default_synthetic: int) -> None:
    g = p.add_argument_group("data (a manifest of paired TIFFs, or synthetic fields)")
    g.add_argument("--manifest", default=None, help="CSV with brightfield, stains, class (and labels) columns")
    g.add_argument("--synthetic", type=non_negative_int, default=default_synthetic, help="number of synthetic fields when no manifest")
    g.add_argument("--classes", type=positive_int, default=4, help="number of synthetic classes")
    g.add_argument("--first-well", type=non_negative_int, default=0, help="first synthetic well (use another for a test set)")
    g.add_argument("--data-seed", type=non_negative_int, default=0, help="seed of the synthetic fields (use another for a test set)")


def _sampling_options(p) -> None:
    p.add_argument("--steps", type=positive_int, default=20, help="sampling steps (at least 1)")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--device", type=device_name, default="cpu", help="cpu or cuda (the GPU path is untested here)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def register(sub) -> None:
    vs = sub.add_parser("virtual-stain", help="predict Cell Painting stains from brightfield (class-guided diffusion)")
    cmds = vs.add_subparsers(dest="virtual_stain_command", required=True)

    p = cmds.add_parser("synthetic", help="write paired synthetic brightfield + stains + labels TIFFs and a manifest")
    p.add_argument("out")
    p.add_argument("--fields", type=positive_int, default=16)
    p.add_argument("--classes", type=positive_int, default=4)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--first-well", type=non_negative_int, default=0)
    p.set_defaults(func=cmd_synthetic)

    p = cmds.add_parser("train", help="train a U-Net (AdaGN class embedding unless --unlabelled) and a guidance classifier")
    p.add_argument("--out", required=True, help="checkpoint (.safetensors)")
    _data_options(p, 16)
    p.add_argument("--unlabelled", action="store_true", help="no class embedding (Palette)")
    p.add_argument("--steps", type=positive_int, default=400, help="U-Net training steps (at least 1)")
    p.add_argument("--classifier-steps", type=non_negative_int, default=300, help="guidance classifier steps (0: none)")
    p.add_argument("--crop", type=positive_int, default=32, help="training crop size (a multiple of 2^(widths-1))")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--widths", type=positive_int, nargs="+", default=[16, 32, 64])
    p.add_argument("--defocus", type=finite_float, nargs="+", default=None, help="µm of each brightfield plane (metadata)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--device", type=device_name, default="cpu", help="cpu or cuda (the GPU path is untested here)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_train)

    p = cmds.add_parser("predict", help="stains (C, Y, X float32 TIFF) from a brightfield TIFF")
    p.add_argument("brightfield", help="(planes, Y, X) or (Y, X) TIFF")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--class", dest="klass", default=None, help="class name or index (default: no label)")
    p.add_argument("--guidance-scale", type=finite_float, default=0.0, help="classifier guidance s (needs --class)")
    _sampling_options(p)
    p.set_defaults(func=cmd_predict)

    p = cmds.add_parser("evaluate", help="PCC, SSIM, MSE/MAE, features, NN matches, MTdist, label-signal audit")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="JSON report")
    _data_options(p, 8)
    p.add_argument("--crop", type=positive_int, default=32)
    p.add_argument("--cells-per-image", type=positive_int, default=5)
    p.add_argument("--guidance-scale", type=finite_float, nargs="+", default=[1.0])
    _sampling_options(p)
    p.set_defaults(func=cmd_evaluate)
