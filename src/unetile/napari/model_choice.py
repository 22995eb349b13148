"""Which model a widget uses: a shipped model by name, a run the Train widget finished in this
session, or any file (a .pt checkpoint, an exported .onnx, a BioImage.IO .zip).

One chooser for the Segment widget's model and the Train widget's ``--init``: a list (a
ComboBox), and a file field shown only while "a file…" is chosen. A shipped model stays a
name, as ``--model NAME`` on the command line: `Predictor.load` and `TrainConfig.init`
resolve it through unetile.zoo.
"""

from __future__ import annotations

import functools
from pathlib import Path

from magicgui.widgets import ComboBox, FileEdit
from psygnal import Signal

from ..errors import UserInputError
from ..zoo import shipped_models, summary

A_FILE = "a file…"  # the entry that shows the file field
NO_MODEL = "none (new weights)"  # the entry of an optional choice (training from scratch)
MODEL_FILES = "*.pt *.onnx *.zip"


class TrainingEvents:
    """What the Train widgets tell the model lists."""

    trained = Signal(Path)  # the best.pt of a run that just finished


events = TrainingEvents()
_recent_runs: list[Path] = []  # best.pt of the runs finished in this session, in that order


def remember_run(best: Path) -> None:
    """A finished run's best.pt is in every model list from now on (once)."""
    if Path(best) not in _recent_runs:
        _recent_runs.append(Path(best))


events.trained.connect(remember_run)  # at import, so before any widget hears of the run


def model_entries(optional: bool, _widget=None) -> list[tuple[str, object]]:
    """The list's (label, value) pairs: "none" (``optional`` only; value None), the shipped
    models (value: the name), the recent runs still on disk (value: their best.pt), "a file…".
    A magicgui ``choices`` callable, so ``reset_choices`` lists the runs finished since."""
    entries: list[tuple[str, object]] = [(NO_MODEL, None)] if optional else []
    entries += [(name, name) for name in shipped_models()]
    entries += [(f"recent run: {_shown(best.parent)}", best) for best in _recent_runs if best.is_file()]
    return entries + [(A_FILE, A_FILE)]


def _shown(folder: Path) -> str:
    """A run folder as the user named it: relative to the working directory when inside it
    (the Train widget's default is runs/napari), else whole."""
    try:
        return str(folder.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(folder)


def _tooltip(files: str) -> str:
    """What each shipped model segments (its card's first line)."""
    lines = [f"{name}: {summary(name)}" for name in shipped_models()]
    return "\n".join(lines + ["recent run: the best.pt of a run the Train widget finished",
                              f"{A_FILE} any {files} model"])


class ModelChoice:
    """A model chosen from `model_entries`, with a file field for "a file…".

    Not a widget itself: its two ``widgets`` go into the dock widget's Container, so that
    their labels line up with the others'. ``value`` is what to load.
    """

    def __init__(self, label: str = "model", optional: bool = False, files: str = MODEL_FILES):
        self.optional, self.files = optional, files
        self.choice = ComboBox(label=label, choices=functools.partial(model_entries, optional), tooltip=_tooltip(files))
        # visible=None, not True: a widget shown before it has a parent would open as a window
        self.file = FileEdit(label="file", filter=files, visible=None if self.choice.value == A_FILE else False)
        self.choice.changed.connect(self._show_file)
        events.trained.connect(self._list_runs)

    @property
    def widgets(self) -> list:
        return [self.choice, self.file]

    @property
    def value(self) -> str | Path | None:
        """A shipped model's name, a run's best.pt, the chosen file, or None ("none").

        Raises:
            UserInputError: "a file…" is chosen and no file is.
        """
        if self.choice.value != A_FILE:
            return self.choice.value
        if str(self.file.value) in ("", "."):
            raise UserInputError(f"{self.choice.label}: choose the file (a {self.files.replace(' ', ', ')} model)")
        return Path(self.file.value)

    @value.setter
    def value(self, model: str | Path | None) -> None:
        """Select a listed entry (a shipped name, a recent run's best.pt, None for "none"), or
        any other path as "a file…"."""
        if any(model == value for _, value in model_entries(self.optional)):
            self.choice.value = model
        else:
            self.file.value = Path(model)
            self.choice.value = A_FILE

    def select_run(self, best: Path) -> None:
        """A run that just finished: listed (if it was not yet) and chosen."""
        remember_run(best)
        self._list_runs()
        self.value = Path(best)

    def _list_runs(self, _best: Path | None = None) -> None:
        """List the runs finished since, "a file…" kept last (a ComboBox appends what is new)
        and the chosen entry chosen."""
        chosen = self.choice.value
        with self.choice.changed.blocked():
            self.choice.del_choice(A_FILE)
            self.choice.reset_choices()
            if chosen in self.choice.choices:  # a run whose folder was deleted is gone from the list
                self.choice.value = chosen

    def _show_file(self, _value=None) -> None:
        self.file.visible = self.choice.value == A_FILE
