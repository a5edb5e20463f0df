"""One exception type for everything a user can get wrong; the CLI prints it as one line."""


class CvzooError(Exception):
    """A user-facing error: bad input, bad config, bad checkpoint. Message is one clear line."""


class TargetMissed(CvzooError):
    """A build whose result misses its accuracy target: nothing was written (exit code 4, not a usage error)."""
    exit_code = 4
