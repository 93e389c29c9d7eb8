"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class JaxnetError(Exception):
    """A user-facing error: bad data, a bad checkpoint, an invalid setting.

    The message is complete on its own (it names the file, key or flag and what is
    wrong), so the CLI prints ``jaxnet: error: <message>`` and exits with status 2.
    """


class DataError(JaxnetError):
    """A Fashion-MNIST file is missing, malformed or fails its checksum."""


class CheckpointError(JaxnetError):
    """A checkpoint or state dict has wrong keys, shapes, dtypes or metadata."""


class TrainingError(JaxnetError):
    """Training cannot go on (for example the loss became NaN or inf)."""
