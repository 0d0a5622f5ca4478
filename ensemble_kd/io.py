"""Atomic, safe file I/O: every file the project writes goes through here.

Writers put the bytes in a temporary file in the destination folder, flush and
fsync it, then ``os.replace`` it into place, so a reader (or a run that is
killed half-way) never sees half a file. Readers of tensors use
``torch.load(..., weights_only=True)``, which refuses to unpickle arbitrary
objects: checkpoints may come from strangers.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


class FormatError(ValueError):
    """A file exists but is not what it claims to be (truncated, corrupt, wrong kind)."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The caller writes the temporary file however it likes (``np.save``,
    ``fig.savefig``, ...). On an exception the temporary file is removed and
    ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp makes the file 0600; give it the mode a plain open() would have (reports and
        # models are meant to be read by others where the umask allows it)
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically; indented unless ``indent`` is None (one line:
    a third of the size and several times faster for millions of numbers)."""
    atomic_write_text(
        path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n"
    )


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line to ``path``, atomically (the log is rewritten under a temporary name).

    Logs are one line per epoch, so rewriting costs nothing and a killed writer can never leave a
    torn line behind. A torn last line left by an older writer is dropped.
    """
    path = Path(path)
    old = b""
    if path.exists():
        old = path.read_bytes()
        if old and not old.endswith(b"\n"):
            old = old[: old.rfind(b"\n") + 1]
    line = json.dumps(record, default=_json_default) + "\n"
    atomic_write_bytes(path, old + line.encode("utf-8"))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines log, skipping a torn last line left by a killed writer."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, raising :class:`FormatError` naming the file when it is not JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from None


def save_tensors(path: str | os.PathLike, obj: dict) -> None:
    """Save a dict of tensors, numbers, strings, lists and dicts atomically with ``torch.save``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_tensors(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a file written by :func:`save_tensors` without executing pickled code.

    Errors are one line in our words, naming the file. Torch's own messages are never passed on:
    for a file holding other objects they advise loading it again with the unsafe loader, which
    would run whatever code the file carries.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        FormatError: the file is empty, truncated, corrupt, not a PyTorch file, or holds objects
            other than tensors and plain containers (a pickle that could run code is refused).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise for a refusal
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt/unsafe files
        raise FormatError(f"{path}: cannot be loaded safely{_load_failure(path, e)}") from None
    if not isinstance(obj, dict):
        raise FormatError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


# A name torch's safe unpickler reports as not allowed, e.g. "GLOBAL __main__.Payload was not ...".
_GLOBAL = re.compile(r"GLOBAL ([A-Za-z_][\w.]{0,120})")


def _load_failure(path: Path, error: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in our words (no text of torch's)."""
    damaged = " (truncated, corrupt or not an ensemble-kd file)"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    if not head:
        return f"{damaged}: the file is empty or unreadable"
    archive = head == b"PK\x03\x04"  # a zip archive: the format torch.save writes
    if isinstance(error, pickle.UnpicklingError):
        name = _GLOBAL.search(str(error))
        if name or archive:
            what = f"a pickled Python object ({name.group(1)})" if name else "pickled data"
            return (
                f": it holds {what} besides tensors, numbers, strings, lists and "
                "dicts, which ensemble-kd never writes and never unpickles, because unpickling "
                "could run code from the file"
            )
    if archive:
        return f"{damaged}: an incomplete or damaged PyTorch archive; save or copy it again"
    if isinstance(error, EOFError):
        return f"{damaged}: the file ends too early"
    return f"{damaged}: not a file written by torch.save"


def _umask() -> int:
    """The process umask (e.g. 0o022)."""
    # Read from /proc where Linux offers it: os.umask both sets and gets, so reading it that way
    # briefly changes the umask of every thread.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def check_out_file(out: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an output file path that is a folder, exists without ``overwrite``, or whose parent
    is not a folder; return it as a Path."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out} is a folder; --out names the file to write")
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    if out.parent.exists() and not out.parent.is_dir():
        raise ValueError(f"{out.parent} is not a folder")
    return out
