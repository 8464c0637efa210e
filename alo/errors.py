"""User-facing errors of the framework.

Every error a user can cause (a bad plan, missing data, an unusable file) is raised as an
:class:`AloError` whose message is one line naming the problem and the fix. ``main.py`` prints
that line and exits non-zero; only ``--debug`` shows a traceback.
"""


class AloError(Exception):
    """A problem the user can fix; its message is a single actionable line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def one_line(text: str) -> str:
    """Escape line breaks and other control characters, so text from a plan or CSV cannot split a message.

    Args:
        text: The message.

    Returns:
        The message on one line.
    """
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text))


class PlanError(AloError):
    """The experimental plan is malformed or holds an invalid value."""


class DataError(AloError):
    """The input data (folder, CSV, images) cannot be used as given."""


class ModelError(AloError):
    """The trained model cannot be found or does not fit the request."""


class LockError(AloError):
    """Another run holds the project folder."""
