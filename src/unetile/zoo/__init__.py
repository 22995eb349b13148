"""Ready-to-use models shipped inside the package (no download): ``--model NAME`` wherever a
checkpoint path is taken (`unetile predict`, `unetile export`, `unetile train --init`, the napari
Segment widget). A file that exists always wins over a name (a folder of that name does not).

Each model is a folder here: ``model.pt`` (a checkpoint of this tool with fp16 weights,
loaded as float32) and ``card.md`` (what it segments, the data and its licence, the exact
commands, the validation figures). `unetile models` lists them with their cards' first line.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserInputError

ZOO = Path(__file__).resolve().parent


def shipped_models() -> dict[str, Path]:
    """Name -> model.pt of every model shipped with this installation."""
    return {folder.name: folder / "model.pt" for folder in sorted(ZOO.iterdir())
            if folder.is_dir() and (folder / "model.pt").is_file()}


def summary(name: str) -> str:
    """The first sentence line of a model's card (below its title)."""
    card = ZOO / name / "card.md"
    lines = [line.strip() for line in card.read_text().splitlines()] if card.is_file() else []
    return next((line for line in lines if line and not line.startswith("#")), "")


def resolve_model(text: str | Path) -> Path:
    """``text`` as a path when it is a file (or looks like one), else a shipped model's name."""
    path = Path(text)
    if path.is_file():
        return path
    known = shipped_models()
    if str(text) in known:
        return known[str(text)]
    if path.suffix or len(path.parts) > 1:
        return path  # a file that is missing: its loader says so, naming it
    names = ", ".join(known) or "none in this installation"
    raise UserInputError(f"--model {text}: no such file, and not a shipped model (shipped: {names}; `unetile models`)")
