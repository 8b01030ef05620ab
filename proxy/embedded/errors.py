"""The one error the embedded server raises."""


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised, started or stopped."""
