"""User-facing errors: each one is printed as a single line and exits non-zero."""


class TokentreeError(Exception):
    """A problem the user can fix; the CLI prints `tokentree: <message>` and exits with `exit_code`."""

    exit_code = 2


class ConfigError(TokentreeError):
    pass


class InputError(TokentreeError):
    pass


class ModelLoadError(TokentreeError):
    pass


class StoreError(TokentreeError):
    pass


class SessionNotFound(StoreError):
    pass


class ConcurrencyError(StoreError):
    """Another writer appended to the same session first (UNIQUE(session_id, version))."""


class StaleCommand(ConcurrencyError):
    """A command was built from a screen older than the session: another window changed it."""
