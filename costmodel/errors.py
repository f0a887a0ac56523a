"""The one exception type for bad input: its message names the problem and what to do."""


class UserInputError(ValueError):
    """Raised before any work starts when an input cannot be used as given."""
