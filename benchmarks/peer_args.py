"""The command line every 2D peer script takes (`cellpose_peer.py`, `stardist_peer.py`): standard
library only, since each peer runs in a venv of its own."""

from __future__ import annotations

import argparse
from pathlib import Path


def peer_arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--train", type=Path, required=True, help="images/ and labels/")
    parser.add_argument("--val", type=Path, required=True, help="images/ and labels/")
    parser.add_argument("--test", type=Path, required=True, help="a folder of images")
    parser.add_argument("--minutes", type=float, default=15.0, help="wall clock from start to the end of training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    return parser.parse_args()
