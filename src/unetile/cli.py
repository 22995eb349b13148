"""The `unetile` command line: parses arguments and calls the library; nothing else lives here.

Errors the user can cause (`UserInputError`) print one line and exit with code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import Interrupted, UserInputError
from .normalization import PREDICTION_FLOOR, PREDICTION_NOISE_FLOOR
from .symmetries import GROUPS


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment images with a trained model (overlap-tile, any size)")
    p.add_argument("--model", required=True, help="checkpoint written by `unetile train` (e.g. RUN/best.pt), an exported "
                   ".onnx / BioImage.IO .zip, or a shipped model's name (`unetile models`)")
    p.add_argument("--input", required=True, help="an image (PNG/TIFF, a TIFF may be a stack) or a folder of them")
    p.add_argument("--out", required=True, help="output folder; each input gives an output of the same name")
    p.add_argument("--tile-size", type=int, default=None, help="network input per tile in px (default: 572 or less)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="tiles per forward pass (default: as many as fit in about 1.5 GB, at most 8)")
    p.add_argument("--tta", action="store_true",
                   help="average over the flips/rotations the model was trained with (up to 8x slower, smoother)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="write a 0/255 mask at this (calibrated) probability instead of probabilities (default: off)",
    )
    p.add_argument("--format", choices=["auto", "png", "tif", "zarr"], default="auto",
                   help="output format (default: auto, as the input; OME-Zarr for a zarr input)")
    p.add_argument("--cluster", default=None,
                   help="predict OME-Zarr outputs on Dask: local:N (N worker processes) or tcp://HOST:PORT")
    p.add_argument("--block-size", type=int, default=2048,
                   help="OME-Zarr outputs: px per block and chunk side, rounded to whole tile steps (default 2048); "
                        "a 3D model's volumes: blocks of as many voxels (2048: about 161 a side)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto (default): bf16 + channels_last on CPUs with bf16, AMP on CUDA, else fp32")
    p.add_argument("--resume", action="store_true",
                   help="continue the TIFF or OME-Zarr outputs that an interrupted (or stopped) run left unfinished "
                        "(bit-identical result)")
    p.add_argument("--compile", action="store_true",
                   help="CUDA: torch.compile + CUDA graphs; ~10 s to compile, then ~1.4x faster (whole slides)")
    p.add_argument("--devices", type=int, default=1,
                   help="split the slices/files across N processes (runs torchrun; one GPU each where present)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present, else cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--channels", choices=["strict", "convert"], default="strict",
                   help="strict: the image must have the model's channels (default); convert: RGB -> grey")
    p.add_argument("--instances", nargs="?", const="watershed", choices=["watershed", "components"],
                   help="write cell label images (TIFF; NGFF labels in OME-Zarr outputs): seeded watershed "
                        "(default) or connected components")
    p.add_argument("--into-input", action="store_true",
                   help="OME-Zarr input: write the cells into its own labels/ group (never over an existing one)")
    p.add_argument("--label-name", default="cells", help="OME-Zarr: the cells' name under labels/ (default: cells)")
    p.add_argument("--diameter", type=float, metavar="PX",
                   help="models trained with a cell diameter: the cells' diameter in these images, px (default: "
                        "estimated per image by a first pass; images are rescaled to the model's cell size)")
    p.add_argument("--normalization-floor", type=float, default=PREDICTION_FLOOR, metavar="F",
                   help="a nearly empty image's upper normalisation value is held to at least F of the way to "
                        "its 99.9th percentile, so that its noise is not read as cells "
                        f"(default: {PREDICTION_FLOOR:g}; 0: as in training)")
    p.add_argument("--normalization-noise-floor", type=float, default=PREDICTION_NOISE_FLOOR, metavar="K",
                   help="and at least K standard deviations of its pixel noise above its low value, so that a field "
                        f"with no cells stays dark (default: {PREDICTION_NOISE_FLOOR:g}; 0: as in training)")
    p.set_defaults(run=_run_predict)


def _run_predict(args: argparse.Namespace) -> int | None:
    import os

    from .inference.predict import PredictOptions, predict_files

    if _needs_launch(args):
        return _launch(args)

    options = PredictOptions(
        tile_size=args.tile_size,
        batch_size=args.batch_size,
        tta=args.tta,
        threshold=args.threshold,
        format=args.format,
        precision=args.precision,
        overwrite=args.overwrite,
        instances=args.instances,
        label_name=args.label_name,
        into_input=args.into_input,
        convert_channels=args.channels == "convert",
        resume=args.resume,
        compile=args.compile,
        diameter=args.diameter,
        normalization_floor=args.normalization_floor,
        normalization_noise_floor=args.normalization_noise_floor,
    )
    written = predict_files(args.model, args.input, args.out, options, device=args.device, cluster=args.cluster,
                            block_px=args.block_size)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {len(written)} file(s) to {args.out}")
    return None


def _number_or_auto(text: str) -> float | str:
    """An option value that is a number or the word ``auto``."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, got {text!r}") from None


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a U-Net on your images and labels (see --preset)")
    _add_train_data(p.add_argument_group("data"))
    _add_train_run(p.add_argument_group("run"))
    _add_train_model(p.add_argument_group("model and optimisation (default: from the preset)"))
    p.set_defaults(run=_run_train)


def _add_labelled_images(d: argparse._ActionsContainer) -> None:
    d.add_argument("--data", help="folder with images/ and labels/ (matching names, PNG or TIFF)")
    d.add_argument("--images", help="or: an image stack / folder ...")
    d.add_argument("--labels", help="... and its label stack / folder")


def _add_train_data(d: argparse._ArgumentGroup) -> None:
    _add_labelled_images(d)
    d.add_argument("--val", help="a separate validation folder with images/ and labels/")
    d.add_argument("--val-fraction", type=float, default=0.2,
                   help="last fraction of slices to validate on (default: 0.2)")
    d.add_argument("--classes", type=int,
                   help="number of classes for integer class-id labels (default: a mask, or instance ids where a "
                        "label has more than two values)")
    d.add_argument("--dims", type=int, choices=[2, 3],
                   help="2: images (each page of a stack alone); 3: volumes (each TIFF volume and its label volume "
                        "one item, a 3D U-Net) (default: 3 where --init is a 3D model or the image files carry a z "
                        "voxel size, else 2)")
    d.add_argument("--voxel-size", metavar="Z,Y,X",
                   help="volumes: voxel size in micrometres, overriding the files' metadata (default: the files'; "
                        "unknown: isotropic)")
    d.add_argument("--ignore-label", type=int, metavar="V",
                   help="label value of pixels that are not annotated (sparse labels): they weigh 0 and are left "
                        "out of validation (default: every pixel is labelled)")


def _add_train_run(r: argparse._ArgumentGroup) -> None:
    r.add_argument("--out", default="runs/unetile", help="run folder (default: runs/unetile)")
    r.add_argument("--resume", metavar="RUN", help="continue the run in this folder exactly where it stopped")
    r.add_argument("--overwrite", action="store_true", help="reuse a non-empty run folder")
    r.add_argument("--preset", default="fast", help="fast (CPU minutes, default), paper or seed")
    r.add_argument("--init", metavar="MODEL", help="start from this trained model or shipped model's name (fine-tuning): "
                   "its architecture and weights; the output layer starts afresh where the number of classes differs")
    r.add_argument("--epochs", type=int, help="epochs (default: from the preset)")
    r.add_argument("--time-limit", help="stop cleanly after this long, e.g. 15m (calibration included)")
    r.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    r.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if present)")
    r.add_argument("--precision", default="auto", help="auto (bf16 on CPUs with it, AMP on CUDA), fp32, bf16, fp16")
    r.add_argument("--workers", type=int, help="DataLoader worker processes for augmentation (default: 1 on 2 cores)")
    r.add_argument("--tiles-on", choices=["auto", "cpu", "device"],
                   help="where training tiles are cut and augmented: auto (on CUDA the GPU, holding the training "
                        "images, unless --skeleton-recall, flows or --zoom, or they fill a quarter of its memory), "
                        "cpu, device")
    r.add_argument("--select-by", default="loss", help="best.pt by: loss (validation loss, default), score (pixel + "
                   "adapted Rand error), pixel_error, adapted_rand_error, rand_error, v_rand, dice")
    r.add_argument("--devices", type=int, default=1,
                   help="train in N processes with DistributedDataParallel (runs torchrun; GPUs or CPU)")
    r.add_argument("--dist-timeout", type=float, default=300.0,
                   help="seconds a process waits for the others before the job fails (default: 300)")
    r.add_argument("--skip-nonfinite", action="store_true", help="skip steps with a NaN/inf loss instead of stopping")
    r.add_argument("--no-calibrate-tta", action="store_true", help="choose the threshold without TTA at the end")


def _add_train_model(m: argparse._ArgumentGroup) -> None:
    m.add_argument("--width", type=int, help="channels at the first level")
    m.add_argument("--depth", type=int, help="poolings (default: 4)")
    m.add_argument("--padding", choices=["valid", "same"])
    m.add_argument("--up-mode", choices=["transpose", "bilinear"], help="upsampling (default: transpose, the paper)")
    m.add_argument("--dropout", type=float)
    m.add_argument("--tile-size", type=int, help="network input per tile (px)")
    m.add_argument("--batch-size", type=int)
    m.add_argument("--samples-per-epoch", type=int)
    m.add_argument("--loss", help="weighted-ce (paper), ce, bce or dice")
    m.add_argument("--optimizer", help="sgd, adam or adamw")
    m.add_argument("--lr", type=float)
    m.add_argument("--momentum", type=float)
    m.add_argument("--ema", type=float, help="decay of a moving average of the weights, validated and saved (0: off)")
    m.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, help="BatchNorm (default: on)")
    m.add_argument("--weight-map", action=argparse.BooleanOptionalAction, help="the paper's border weight map")
    m.add_argument("--w0", type=_number_or_auto,
                   help="the weight map's border weight, or auto (fast's default): 10 (the paper's) where the labels "
                        "are instance ids, 5 otherwise; the other presets: 10")
    m.add_argument("--sigma", type=float, help="the weight map's border width, px (default: 5, the paper)")
    m.add_argument("--class-balance", action=argparse.BooleanOptionalAction,
                   help="the weight map's w_c: classes weighted by inverse frequency (default: the preset's; fast: "
                        "on where the labels are instance ids, off otherwise; paper: on)")
    m.add_argument("--skeleton-recall", type=float, metavar="WEIGHT",
                   help="add the skeleton recall loss on the background, this much of it: keeps thin gaps "
                        "between cells open (default: 0, off)")
    m.add_argument("--cell-target", choices=["auto", "foreground", "boundary", "touching", "flows", "distance"],
                   help="instance-id labels: learn the cells' foreground, touching cells parted by a 1-px line; "
                        "three classes: background, cell interior, a 2-px band along each edge; three classes: "
                        "background, cell, a 1-3 px band only where two cells meet; Cellpose's flows towards each "
                        "cell's centre and the cell probability; or each cell pixel's distance to the background "
                        "(relative to the cell's largest). Default auto: flows for images, foreground for volumes, "
                        "the --init model's target when fine-tuning")
    m.add_argument("--cell-diameter", metavar="auto|median|off|PX",
                   help="instance-id labels: rescale each image so its median cell is this many px across before "
                        "it reaches the net; predict does the same (median: the training cells' median; off: images "
                        "at their own size; default auto: the --init model's, else off for flows and the median "
                        "for the other targets)")
    m.add_argument("--elastic", action=argparse.BooleanOptionalAction, help="elastic deformation")
    m.add_argument("--elastic-sigma", type=float,
                   help="std of the elastic displacements, in-plane px (default: 10, the paper; fast on volumes: 2)")
    m.add_argument("--flips", choices=list(GROUPS),
                   help="flips/rotations to augment with, and that --tta averages over: all 8, left-right, none")
    m.add_argument("--grey", action=argparse.BooleanOptionalAction, help="grey-value changes")
    m.add_argument("--soft-labels", action=argparse.BooleanOptionalAction,
                   help="binary labels: warp them into foreground fractions (bilinear), not nearest neighbour")
    m.add_argument("--zoom", type=float, metavar="Z",
                   help="images: zoom each training tile by a factor drawn log-uniform in [1/Z, Z], so that the net "
                        "sees cells at several sizes (default: 1, off)")
    m.add_argument("--small-cell-weight", type=float, metavar="W",
                   help="flows: a cell smaller than its image's median weighs the median area / its area in the "
                        "loss, at most W (default: 4; 1: every cell the same)")
    m.add_argument("--label-offset", metavar="auto|none|DY,DX",
                   help="labels drawn off the image's pixel grid: estimate the offset (auto), give it in px, or "
                        "none; images are resampled onto the labels' grid, in training and by predict "
                        "(negative values: --label-offset=-0.5,0)")


def _run_train(args: argparse.Namespace) -> int | None:
    import os

    from .training import TrainConfig, train
    from .training.config import parse_duration

    if _needs_launch(args):
        return _launch(args)

    names = ["data", "images", "labels", "val", "val_fraction", "classes", "out", "preset", "init", "epochs", "seed",
             "device", "precision", "workers", "tiles_on", "select_by", "width", "depth", "padding", "up_mode", "dropout",
             "tile_size", "batch_size", "samples_per_epoch", "loss", "optimizer", "lr", "momentum", "ema",
             "weight_map", "w0", "sigma", "class_balance", "skeleton_recall", "cell_target", "cell_diameter",
             "small_cell_weight", "elastic", "elastic_sigma", "flips", "grey", "soft_labels", "zoom", "label_offset",
             "batch_norm", "dist_timeout", "dims", "voxel_size", "ignore_label"]
    cfg = TrainConfig(**{n: getattr(args, n) for n in names if getattr(args, n) is not None},
                      time_limit=parse_duration(args.time_limit) if args.time_limit else None,
                      calibrate_tta=not args.no_calibrate_tta, skip_nonfinite=args.skip_nonfinite)
    run = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"model: {run / 'best.pt'}")
    return None


def _needs_launch(args: argparse.Namespace) -> bool:
    """--devices N > 1 and not already one of torchrun's processes."""
    import os

    return args.devices > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1


def _launch(args: argparse.Namespace) -> int:
    """Run this same command in ``--devices`` processes through torchrun."""
    from .device import resolve_device
    from .distributed import check_gpus, launch

    device = args.device
    if device is None and args.command == "train" and args.resume:  # the device the resumed run will use
        from pathlib import Path

        from .training.config import TrainConfig, resume_config

        device = resume_config(TrainConfig(), Path(args.resume)).device
    check_gpus(args.devices, resolve_device(device))
    return launch(args.devices, _without_option(args.argv, "--devices"))


def _without_option(argv: list[str], name: str) -> list[str]:
    """argv without ``name VALUE`` / ``name=VALUE`` (to hand the rest to torchrun)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="ISBI 2012 metrics, Dice/IoU, and an HTML report of the errors")
    p.add_argument("--pred", required=True,
                   help="probability maps / masks: a folder or a stack (as unetile predict writes)")
    p.add_argument("--labels", required=True, help="truth: a folder (matched by name) or a stack (by slice)")
    p.add_argument("--threshold", type=float, default=0.5, help="foreground = map > threshold (default: 0.5)")
    p.add_argument("--json", help="write all metrics, curves and best thresholds to this JSON file")
    p.add_argument("--report", metavar="DIR", help="write a self-contained HTML report (DIR/index.html)")
    p.add_argument("--images", help="the input images, shown in the report")
    p.add_argument("--dims", choices=["auto", "2", "3"], default="auto",
                   help="3: one volume per TIFF file, scored in 3D (3D objects, VOI, adapted Rand, Dice); "
                        "2: plane by plane; auto (default): 3 where the label files are volumes (a Z axis "
                        "or a z voxel size in the TIFF)")
    p.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> None:
    from .evaluation.evaluate import run_evaluate

    run_evaluate(args.pred, args.labels, threshold=args.threshold, json_path=args.json, report_dir=args.report,
                 images=args.images, dims=args.dims)


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="choose a trained model's threshold and cell settings again on your labelled "
                                         "images (no training)")
    p.add_argument("--model", required=True, help="a checkpoint written by `unetile train` (RUN/best.pt) or a shipped "
                                                   "model's name")
    _add_labelled_images(p)
    p.add_argument("--out", help="the calibrated checkpoint (default: RUN/best-calibrated.pt beside the model; a "
                                 "shipped model: NAME-calibrated.pt in the working folder)")
    p.add_argument("--no-tta", action="store_true",
                   help="calibrate on plain predictions, for use without predict --tta (default: with TTA)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="as predict's (default: auto); a run trained with --precision fp32 was calibrated in fp32")
    p.add_argument("--ignore-label", type=int, metavar="V", help="label value of pixels that are not annotated")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present, else cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(run=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> None:
    from .training.recalibrate import CalibrationRequest, recalibrate

    out = recalibrate(CalibrationRequest(args.model, data=args.data, images=args.images, labels=args.labels,
                                         out=args.out, tta=not args.no_tta, precision=args.precision,
                                         ignore_label=args.ignore_label, device=args.device,
                                         overwrite=args.overwrite))
    print(f"model: {out}")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthetic data -> train a few minutes -> segment -> measure (no download)")
    p.add_argument("--out", default="demo", help="folder for everything the demo writes (default: demo)")
    p.add_argument("--minutes", type=float, default=2.0, help="training time (default: 2)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(args.out, args.minutes, args.seed)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model: ONNX, TorchScript (dynamic height/width; depth too for a "
                       "3D net) or a BioImage.IO package")
    p.add_argument("--model", required=True, help="checkpoint (e.g. RUN/best.pt) or a shipped model's name")
    p.add_argument("--format", choices=["onnx", "torchscript", "bioimageio"], default="onnx")
    p.add_argument("--out", required=True, help="output file (e.g. model.onnx, or model.zip for bioimageio)")
    b = p.add_argument_group("BioImage.IO package (--format bioimageio)")
    b.add_argument("--author", action="append", default=[], help="an author's name (required; repeat for several)")
    b.add_argument("--license", default="CC-BY-4.0", help="SPDX licence of the model (default: CC-BY-4.0)")
    b.add_argument("--cite", action="append", default=[],
                   help="a citation 'TEXT|DOI' or 'TEXT|URL', e.g. the training data's (repeatable)")
    b.add_argument("--name", help="the model's name (default: from the run folder)")
    b.add_argument("--description", help="one sentence: what it segments, in which images")
    b.add_argument("--sample", help="an image for the test tensors and cover (default: the run's first training image)")
    p.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> None:
    if args.format == "bioimageio":
        from pathlib import Path

        from .packaging.model_package import PackageInfo, export_package

        info = PackageInfo(tuple(args.author), args.license, tuple(args.cite), args.name, args.description,
                           Path(args.sample) if args.sample else None)
        diff = export_package(args.model, args.out, info)
        print(f"wrote {args.out}; TorchScript and ONNX against PyTorch: max |dprob| = {diff:.2e}")
        return
    from .packaging.export import export_model

    diff = export_model(args.model, args.out, args.format)
    print(f"wrote {args.out}; parity with PyTorch fp32: max |dprob| = {diff:.2e}")
    if diff > 1e-4:
        raise RuntimeError(f"exported model differs from PyTorch by {diff:.2e} > 1e-4")


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="the ready-to-use models shipped with this installation (--model NAME)")
    p.set_defaults(run=_run_models)


def _run_models(args: argparse.Namespace) -> None:
    from .zoo import ZOO, shipped_models, summary

    models = shipped_models()
    if not models:
        print("no models are shipped with this installation")
    for name in models:
        print(f"{name:22s} {summary(name)}")
    if models:
        print(f"\nuse: unetile predict --model NAME ...; cards: {ZOO}/NAME/card.md")


def _add_benchmark(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="prediction speed: reference loop, MONAI, predict_tiled, ONNX Runtime, limit")
    p.add_argument("--quick", action="store_true", help="smaller workloads (1024^2 and 6 x 512^2)")
    p.add_argument("--json", help="write the rows and the machine to this JSON file")
    p.add_argument("--width", type=int, default=64, help="net width (default: 64, the paper's)")
    p.add_argument("--precision", default="auto", help="fast path precision: auto, fp32, bf16")
    p.add_argument("--device", help="cpu, cuda or cuda:N: every row on that device (default: CUDA where present)")
    p.add_argument("--methods", help="comma-separated rows to run (default: all of "
                   "reference,monai,predict_tiled,predict_tiled+compile,onnxruntime,limit)")
    p.add_argument("--sides", help="comma-separated sides of the single-image workloads (default: 2048, "
                   "and 8192 on CUDA; 1024 with --quick); the 512^2 stack always runs")
    p.set_defaults(run=_run_benchmark)


def _run_benchmark(args: argparse.Namespace) -> None:
    from .inference.benchmark import METHODS, run_benchmark

    methods = tuple(args.methods.split(",")) if args.methods else METHODS
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UserInputError(f"--methods: unknown row(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if args.sides and not all(s.isdigit() for s in args.sides.split(",")):
        raise UserInputError(f"--sides: {args.sides!r} is not a comma-separated list of whole numbers")
    sides = tuple(int(s) for s in args.sides.split(",")) if args.sides else None
    run_benchmark(quick=args.quick, width=args.width, json_path=args.json, precision=args.precision,
                  device=args.device, methods=methods, sides=sides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unetile", description="U-Net for microscopy: train, segment images of any size, evaluate."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="largest image accepted, in pixels (default: 1e9; a decompression-bomb guard)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_train(sub)
    _add_predict(sub)
    _add_evaluate(sub)
    _add_calibrate(sub)
    _add_export(sub)
    _add_models(sub)
    _add_benchmark(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    try:
        from .io import DEFAULT_MAX_PIXELS, set_max_pixels

        set_max_pixels(args.max_pixels or DEFAULT_MAX_PIXELS)
        code = args.run(args)
    except UserInputError as e:
        if args.debug:
            raise
        print(f"unetile {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"unetile {args.command}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"unetile {args.command}: interrupted", file=sys.stderr)
        return 130
    return code or 0
