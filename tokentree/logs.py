"""Logging goes to a file in the data dir: nothing may print while the screen is up."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tokentree.paths import ensure_data_dir, log_path

_configured: Path | None = None


def setup_logging(level: int = logging.INFO) -> Path:
    """Send tokentree's (and the libraries') log records to the log file; return its path."""
    global _configured
    path = log_path()
    if _configured == path:
        return path
    ensure_data_dir()
    # Create the file user-only before logging opens it: logs can hold prompt text.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.close(fd)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_tokentree", False)]:
        root.removeHandler(old)
    handler._tokentree = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    _configured = path
    return path
