"""One exception type for everything a user can get wrong; the CLI prints it as one line. And `Say`, where a long
run's progress and warning lines go."""
from typing import Callable

Say = Callable[[str], None]  # print, or the CLI's stderr console


class CvzooError(Exception):
    """A user-facing error: bad input, bad config, bad checkpoint. Message is one clear line."""


class TargetMissed(CvzooError):
    """A build whose result misses its accuracy target: nothing was written (exit code 4, not a usage error)."""
    exit_code = 4
