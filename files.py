"""Files that are never half-written, and JSON-lines logs that survive a torn line.

    write_atomic(path, text)   the new text or the old file, nothing between: a temporary file with
                               a unique name beside the target, then renamed over it (two writers
                               never share a temporary); a target that is not a regular file (a
                               device, a folder) is refused instead of replaced
    write_json(path, obj)      write_atomic of indented JSON
    append_jsonl(path, row)    one JSON line appended; a torn last line (a killed writer) is ended first
    read_jsonl(path)           the rows; lines that do not parse are skipped

Torch-free. Every program that writes a result, a log or a config goes through these.
"""

import json
import os
import stat
import tempfile

from cli import UsageError


def check_target(path: str) -> None:
    """A UsageError unless `path` is a regular file or does not exist yet."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise UsageError(f"{path} exists and is not a regular file; refusing to replace it")


def write_atomic(path: str, text: str) -> None:
    check_target(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def append_jsonl(path: str, row: dict) -> None:
    """Append one JSON line. A torn last line (a run killed mid-write, a full disk) is ended first,
    so it never merges with the new record; readers skip it (read_jsonl)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "ab") as f:
        if f.tell() > 0:
            with open(path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    f.write(b"\n")
        f.write((json.dumps(row) + "\n").encode())


def read_jsonl(path: str) -> list[dict]:
    """The rows of a JSON-lines file; lines that do not parse (a torn write) are skipped."""
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows
