"""The one exception type for problems a user can cause (bad files, bad options).

The command line turns a `UserInputError` into a single line and exit code 2; any other
exception is a bug and keeps its traceback (shown with ``--debug``).
"""


class UserInputError(Exception):
    """A problem with the user's input: the message names the file or option and the fix."""


class Interrupted(Exception):
    """A run stopped on request (SIGINT/SIGTERM); its state was saved to resume from."""
