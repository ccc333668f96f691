"""``gradcamo train`` and ``gradcamo synthetic``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from napari_gradcamo.cli._cache import add_cache_options, load_cache
from napari_gradcamo.cli._common import progress_bar


def cmd_train(args) -> int:
    from napari_gradcamo.train.loop import BEST_FILE, TrainConfig, fit

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    channels = args.channels.split(",") if args.channels else None
    classes = args.classes.split(",") if args.classes else None
    manifest, cache = load_cache(args, args.manifest, out, args.crop_shape, channels, classes)
    kwargs = json.loads(args.arch_kwargs) if args.arch_kwargs else ({"width": args.width} if args.arch in ("small-cnn-3d", "small-cnn-2d") else {})
    config = TrainConfig(
        architecture=args.arch, architecture_kwargs=kwargs, target_layer=args.layer, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, patience=args.patience, balance=args.balance, jitter=args.jitter,
        gradcamo_weight=args.gradcamo_weight, seed=args.seed, device=args.device, amp=not args.no_amp,
        head=args.head,
    )
    print(f"{len(cache.data)} crops of {len(manifest)} fields, classes {cache.class_names}, channels "
          f"{cache.channel_names}; cache {cache.folder} ({'reused' if cache.reused else 'built'})", file=sys.stderr)
    bar, update = progress_bar("train", "batch")

    def epoch_end(epoch: int, stats: dict) -> None:
        text = f"epoch {epoch}: loss {stats['loss']:.3f} acc {stats['accuracy']:.2f}"
        if stats.get("val_loss") is not None:
            text += f", val loss {stats['val_loss']:.3f} acc {stats['val_accuracy']:.2f}"
        if args.gradcamo_weight > 0:
            text += f", penalty {stats['penalty']:.3f}"
        bar.write(text, file=sys.stderr)

    extra = {"manifest": str(Path(args.manifest).resolve()), "crop_cache": str(cache.folder)}
    try:
        result = fit(cache.data, cache.class_names, cache.channel_names, args.crop_shape, config, out,
                     resume=args.resume, extra_metadata=extra, input_metadata={"voxel_size": cache.voxel_size},
                     progress=update, epoch_end=epoch_end)
    finally:
        bar.close()
    summary = {
        "checkpoint": str(out / BEST_FILE), "best_epoch": result.best_epoch, "epochs_run": len(result.history.loss),
        "stopped_early": result.stopped_early,
        "val_accuracy": result.history.val_accuracy[result.best_epoch - 1] if result.history.val_accuracy else None,
        "val_loss": result.history.val_loss[result.best_epoch - 1] if result.history.val_loss else None,
        "test": result.test, "crops": {k: int(len(v)) for k, v in result.split.items()},
        "target_layer": result.metadata.target_layer,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0


def cmd_synthetic(args) -> int:
    from napari_gradcamo.synthetic.files import write_synthetic_manifest

    confound = args.confound_class
    if confound is not None and confound not in ("mismatch", "random"):
        confound = int(confound)
    path = write_synthetic_manifest(args.out, args.scenario, seed=args.seed, n_fields=args.fields,
                                    first_well=args.first_well, confound_class=confound, n_cells=args.cells,
                                    sites_per_well=args.sites_per_well, planar=args.planar)
    print(json.dumps({"manifest": str(path)}, indent=2))
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a 3D crop classifier from a manifest (CSV) of images and masks")
    p.add_argument("manifest", help="CSV with image, class, plate, well, site and masks (or cellpose settings)")
    p.add_argument("--out", required=True, help="output folder: model.safetensors, last.safetensors, resume.pt, history.csv")
    p.add_argument("--arch", default="small-cnn-3d",
                   help="small-cnn-3d, small-cnn-2d (2D images, --crop-shape 1 Y X), efficientnet-b0 … efficientnet-b7, "
                        "or a name registered by an installed package")
    p.add_argument("--head", default="softmax", choices=("softmax", "sigmoid-binary", "multilabel"),
                   help="output head: softmax over the classes, one sigmoid logit (two classes), or multi-label sigmoids")
    p.add_argument("--width", type=int, default=8, help="small CNN width")
    p.add_argument("--arch-kwargs", default=None, help="JSON architecture keyword arguments (overrides --width)")
    p.add_argument("--crop-shape", type=int, nargs=3, default=[8, 32, 32], metavar=("Z", "Y", "X"))
    p.add_argument("--channels", default=None, help="comma-separated stains to use, in order (default: the first image's)")
    p.add_argument("--classes", default=None, help="comma-separated class order (default: sorted class names)")
    p.add_argument("--layer", default=None, help="Grad-CAM layer stored in the checkpoint and used by the regulariser")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the one-cycle schedule (AdamW)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of wells (per class) for validation")
    p.add_argument("--test-fraction", type=float, default=0.0, help="share of wells (per class) held out as a test split")
    p.add_argument("--patience", type=int, default=5, help="stop after this many epochs without a lower validation loss (0: never)")
    p.add_argument("--balance", choices=("loss", "sampler", "none"), default="loss",
                   help="class balance: weighted loss, balanced sampling, or none")
    p.add_argument("--jitter", type=float, default=0.1, help="per-channel intensity jitter (s.d. of the gain)")
    p.add_argument("--gradcamo-weight", type=float, default=0.0, metavar="LAMBDA",
                   help="weight λ of the Grad-CAMO penalty λ·(1 − Grad-CAMO) (0: plain training)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out (resume.pt)")
    add_cache_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("synthetic", help="write synthetic 3D Cell Painting fields + masks + manifest.csv")
    p.add_argument("out", help="output folder")
    p.add_argument("--scenario", choices=("honest", "shortcut"), default="honest")
    p.add_argument("--fields", type=int, default=16, help="fields (--sites-per-well sites per well, wells alternate classes)")
    p.add_argument("--cells", type=int, default=12, help="cells per field")
    p.add_argument("--sites-per-well", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--first-well", type=int, default=0)
    p.add_argument("--confound-class", default=None, help="break the background confound: mismatch, random or a class index")
    p.add_argument("--2d", dest="planar", action="store_true", help="2D fields (CYX): each field's widest plane")
    p.set_defaults(func=cmd_synthetic)
