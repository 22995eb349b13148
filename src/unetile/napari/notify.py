"""Errors in the widgets: one line in a napari notification, never a traceback dialog."""

from __future__ import annotations

from ..errors import UserInputError, first_line


def one_line(error: BaseException | str) -> str:
    """What `unetile` prints on the command line for this error: its text for a mistake the user
    can fix (a bad file, a wrong option), else the exception's type and first line."""
    if isinstance(error, str):
        return error
    text = first_line(error, default="")
    return text if isinstance(error, UserInputError) else f"{type(error).__name__}: {text}"


def show_one_line(error: BaseException | str) -> None:
    from napari.utils.notifications import show_error

    show_error(one_line(error))
