"""The `unet` command line: parses arguments and calls the library; nothing else lives here.

Errors the user can cause (`UserInputError`) print one line and exit with code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import UserInputError


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment images with a trained model (overlap-tile, any size)")
    p.add_argument("--model", required=True, help="checkpoint written by `unet train` (e.g. RUN/best.pt)")
    p.add_argument("--input", required=True, help="an image (PNG/TIFF, a TIFF may be a stack) or a folder of them")
    p.add_argument("--out", required=True, help="output folder; each input gives an output of the same name")
    p.add_argument("--tile-size", type=int, default=None, help="network input per tile in px (default: 572 or less)")
    p.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass (default: 4)")
    p.add_argument("--tta", action="store_true", help="average over the 8 flips/rotations (8x slower, smoother)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="write a 0/255 mask at this (calibrated) probability instead of probabilities (default: off)",
    )
    p.add_argument("--format", choices=["auto", "png", "tif"], default="auto", help="output format (default: auto, as the input)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast precision (default: fp32)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if present, else cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(run=_run_predict)


def _run_predict(args: argparse.Namespace) -> None:
    from .predict import PredictOptions, predict_files

    options = PredictOptions(
        tile_size=args.tile_size,
        batch_size=args.batch_size,
        tta=args.tta,
        threshold=args.threshold,
        format=args.format,
        precision=args.precision,
        overwrite=args.overwrite,
    )
    written = predict_files(args.model, args.input, args.out, options, device=args.device)
    print(f"wrote {len(written)} file(s) to {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unet", description="U-Net for microscopy: train, segment images of any size, evaluate."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_predict(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    try:
        args.run(args)
    except UserInputError as e:
        if args.debug:
            raise
        print(f"unet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"unet {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
