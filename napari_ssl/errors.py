"""User-facing errors: one clear line, shown as-is by the CLI and the viewer (no traceback)."""


class NapariSSLError(Exception):
    """An error caused by the user's input or environment, with a message that says what to change."""


class NoImageFound(NapariSSLError):
    pass
