"""The database file itself: checks made before SQLite ever opens it, creating it user-only,
and turning SQLite failures into one-line :class:`StoreError` messages.

The checks only read: a file we refuse is left exactly as it was.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import exc as sa_exc

from tokentree.errors import StoreError

SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_SIZE = 100


@dataclass(frozen=True)
class SqliteHeader:
    """The fields of the 100-byte SQLite header that tell a truncated file."""

    page_size: int
    change_counter: bytes
    page_count: int  # the "in-header database size", valid when valid_for == change_counter
    valid_for: bytes


def parse_header(header: bytes) -> SqliteHeader:
    page_size = int.from_bytes(header[16:18], "big")
    return SqliteHeader(
        page_size=65536 if page_size == 1 else page_size,  # 1 encodes 65536
        change_counter=header[24:28],
        page_count=int.from_bytes(header[28:32], "big"),
        valid_for=header[92:96],
    )


def check_file(path: Path) -> bool:
    """Refuse, without touching it, a file we must not open. Returns True when the file
    does not exist yet (or is empty)."""
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a database file")
    directory = path.parent
    if directory.exists() and not os.access(directory, os.W_OK | os.X_OK):
        raise StoreError(f"cannot write in {directory} (the database needs its -wal and -shm files there)")
    if not path.exists():
        return True
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{path} is not a regular file")
    if not (st.st_mode & stat.S_IWUSR) or not os.access(path, os.R_OK | os.W_OK):
        raise StoreError(f"database {path} is read-only (tokentree needs to write to it)")
    if st.st_size == 0:
        return True
    with open(path, "rb") as fh:
        raw = fh.read(HEADER_SIZE)
    if len(raw) < HEADER_SIZE or not raw.startswith(SQLITE_MAGIC):
        if len(raw) < HEADER_SIZE and SQLITE_MAGIC.startswith(raw[:16]):
            raise StoreError(f"database {path} is truncated")
        raise StoreError(f"{path} is not a tokentree database (not an SQLite file)")
    header = parse_header(raw)
    if header.page_size < 512 or header.page_size & (header.page_size - 1):
        raise StoreError(f"database {path} is damaged (bad page size)")
    wal = path.with_name(path.name + "-wal")
    wal_has_frames = wal.exists() and wal.stat().st_size > 32
    # With a non-empty WAL the main file may legitimately lag (an interrupted checkpoint);
    # SQLite recovers from the WAL, so only judge the size when there is none.
    if not wal_has_frames:
        if st.st_size % header.page_size:
            raise StoreError(f"database {path} is truncated")
        size_is_valid = header.valid_for == header.change_counter
        if header.page_count and size_is_valid and st.st_size < header.page_count * header.page_size:
            raise StoreError(f"database {path} is truncated")
    return False


def create_file(path: Path) -> None:
    """Create the (empty) database file and its directory, user-only."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path.parent, 0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


def describe_db_error(exc: BaseException, path: Path) -> str:
    """A one-line message for an SQLite failure, saying what the user can do about it."""
    orig = getattr(exc, "orig", None) or exc
    msg = " ".join(str(orig).split())
    low = msg.lower()
    if "locked" in low or "busy" in low:
        return f"database {path} is locked by another process; close it there or try again"
    if "readonly" in low or "read-only" in low:
        return f"database {path} is read-only"
    if "disk is full" in low or "disk full" in low:
        return f"cannot write to {path}: the disk is full"
    if "not a database" in low or "malformed" in low:
        return f"{path} is damaged or not a tokentree database ({msg})"
    if "unable to open" in low:
        return f"cannot open database {path} ({msg})"
    return f"database error on {path}: {msg}"


@contextmanager
def db_errors(path: Path) -> Iterator[None]:
    """Inside: SQLite and OS failures become StoreError with a one-line message."""
    try:
        yield
    except StoreError:
        raise
    except sa_exc.DBAPIError as exc:
        raise StoreError(describe_db_error(exc, path)) from None
    except OSError as exc:
        raise StoreError(f"cannot use database {path}: {exc.strerror or exc}") from None
