"""The one exception type for problems a user can cause (bad files, bad options).

The command line turns a `UserInputError` into a single line and exit code 2; any other
exception is a bug and keeps its traceback (shown with ``--debug``).

Files that came from someone else (images, zarr chunks and metadata, TIFF tiles) are read
inside `reading`: whatever the decoder raises becomes that one line, naming the file, the
part of it (chunk, tile, metadata) and the decoder's own first line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


class UserInputError(Exception):
    """A problem with the user's input: the message names the file or option and the fix."""


def first_line(error: BaseException, default: str | None = None) -> str:
    """The first line of ``error``'s message (for one-line reports); ``default`` (else the
    exception's type name) when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else (type(error).__name__ if default is None else default)


def unreadable(path: str | Path, what: str, error: BaseException) -> UserInputError:
    """The one-line error for a reader that failed on ``path``: ``PATH: WHAT (Type: first line)``."""
    return UserInputError(f"{path}: {what} ({type(error).__name__}: {first_line(error)})")


@contextlib.contextmanager
def reading(path: str | Path, what: str = "cannot read the image") -> Iterator[None]:
    """Turn a reader's failure inside the block into `unreadable` (``what`` says which part of
    ``path`` was being read). A `UserInputError` passes as it is, and so does a `MemoryError`
    (the machine's limit, not the file's fault)."""
    try:
        yield
    except (UserInputError, MemoryError):
        raise
    except Exception as e:  # codecs and parsers raise anything (RuntimeError, ValueError, KeyError, ...)
        raise unreadable(path, what, e) from e


class Interrupted(Exception):
    """A run stopped on request (SIGINT/SIGTERM); its state was saved to resume from."""
