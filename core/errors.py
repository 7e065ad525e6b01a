"""One exception family, so the UI and the CLI can show a clear message for any expected failure."""


class LabError(Exception):
    """An expected failure with a message fit to show a user as-is."""


class InputError(LabError):
    """Bad input from the user: a file, a name, a question."""

    def __init__(self, message: str, *, subject: str | None = None):
        self.subject = subject  # the file or name the problem is about
        super().__init__(f"{subject}: {message}" if subject else message)
        self.reason = message


class NoTextFound(InputError):
    """A file that was read but holds no words: a picture without text. Listed as skipped, not as failed."""


class ModelError(LabError):
    """A model could not be found or loaded."""
