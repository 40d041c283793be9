"""The one exception type for bad user input.

Everything a user can get wrong (a path, a config value, a data row) raises ``SpikepruneError``
with a single line saying what is wrong and how to fix it; the CLI prints it and exits non-zero.
"""


class SpikepruneError(ValueError):
    """Bad input: the message is one line, naming the culprit and the fix."""
