"""Atomic file writes: a temporary file beside the target, fsync'ed and renamed into place.

Readers never see a half-written checkpoint, table or exported model; a killed run leaves at most a hidden
`.<prefix>*.tmp` file beside the target, never a truncated target. A full disk is a user error (one line naming
the folder), and a torch file's bytes do not depend on the temporary name, so a same-seed rerun writes the same
bytes.
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mcrobust.errors import MCRobustError

_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class NoSpaceLeft(MCRobustError):
    """The disk (or the user's quota) filled up while a result was written: the run stops with one line."""


def no_space_left(error: BaseException, target: Path) -> NoSpaceLeft | None:
    """The user error for an OSError that means a full disk or quota, else None."""
    if not isinstance(error, OSError) or error.errno not in _FULL:
        return None
    return NoSpaceLeft(
        f"no space left on {target.parent.absolute()} while writing {target.name}; free some space there "
        "or choose another output folder"
    )


@contextmanager
def atomic_path(target: str | os.PathLike[str], prefix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success fsync it and rename it onto `target`, else delete it.

    Raises:
        NoSpaceLeft: the disk filled up while writing (the temporary file is removed first).
    """
    target = Path(target)
    temporary: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=target.parent, prefix=prefix or f".{target.name}.", suffix=".tmp")
        os.close(handle)
        temporary = Path(name)
        yield temporary
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException as error:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        full = no_space_left(error, target)
        if full is not None:
            raise full from None
        raise


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes | memoryview, prefix: str | None = None) -> Path:
    """Write `data` to `target` atomically (see `atomic_path`)."""
    target = Path(target)
    with atomic_path(target, prefix=prefix) as temporary, open(temporary, "wb") as stream:
        stream.write(data)
    return target


def torch_bytes(obj: Any) -> memoryview:
    """`torch.save(obj)` into memory.

    Saved to a file, torch names the zip records after the file (`<name>/data.pkl`), so a temporary name would
    make every write differ; in memory the records are always `archive/...`, as `torch.load` expects from any file.
    """
    import torch  # here, so that the table writers do not import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer()


def atomic_torch_save(obj: Any, target: str | os.PathLike[str], prefix: str | None = None) -> Path:
    """`torch.save(obj, target)`, atomically and with bytes that depend only on `obj`."""
    return atomic_write_bytes(target, torch_bytes(obj), prefix=prefix)
