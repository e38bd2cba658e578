"""The one exception users see: a mistake they can fix, reported as `error: ...` and exit status 2."""


class UserError(Exception):
    """A bad key, bad value, missing file or missing data: the message names it and says what to do."""


class TrialFailed(RuntimeError):
    """A trial that cannot go on (NaN loss, ...); Ray records the message as the trial's error."""
