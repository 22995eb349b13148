"""The one exception type for problems a user can cause (bad files, bad options).

The command line turns a `UserInputError` into a single line and exit code 2; any other
exception is a bug and keeps its traceback (shown with ``--debug``).
"""


class UserInputError(Exception):
    """A problem with the user's input: the message names the file or option and the fix."""


def first_line(error: BaseException, default: str | None = None) -> str:
    """The first line of ``error``'s message (for one-line reports); ``default`` (else the
    exception's type name) when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else (type(error).__name__ if default is None else default)


class Interrupted(Exception):
    """A run stopped on request (SIGINT/SIGTERM); its state was saved to resume from."""
