"""Files that are never half-written, and JSON-lines logs that survive a torn line.

    write_atomic(path, data)   the new text (or bytes) or the old file, nothing between: a temporary
                               file with a unique name beside the target, flushed to disk, then
                               renamed over it (two writers never share a temporary); a target that
                               is not a regular file (a device, a folder) is refused instead of replaced
    write_json(path, obj)      write_atomic of indented JSON; read_json(path): a JSON object or ValueError
    write_csv(path, rows)      write_atomic of CSV rows
    write_figure(fig, path)    write_atomic of a matplotlib figure (format from the suffix)
    append_jsonl(path, row)    one JSON line appended; a torn last line (a killed writer) is ended first
    read_jsonl(path)           the rows; lines that do not parse are skipped
    check_output(path, flag)   before the work: the file can be written there (UsageError if not)
    check_output_dir(folder, flag)   before the work: the folder exists or can be made, and is writable
    check_outputs(folder, names, flag)   ... and none of the files `names` there is a folder or a device
    locked(path)               a context holding an exclusive flock on `path` (made if missing)
    load_cached(folder, load)  load(folder) if the folder is whole (its manifest: every file's size and
                               sha1), else None after removing it; save_cached(folder, save) writes
                               one whole (a unique temporary folder, the manifest, a rename)

Torch-free. Every program that writes a result, a log or a config goes through these.
"""

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import shutil
import stat
import tempfile

from cli import UsageError


def check_target(path: str) -> None:
    """A UsageError unless `path` is a regular file or does not exist yet."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:  # a path through a file ("x.txt/y"), a name too long, a loop of links
        raise UsageError(f"cannot write {path} ({e.strerror})")
    if not stat.S_ISREG(mode):
        raise UsageError(f"{path} exists and is not a regular file; refusing to replace it")


def write_atomic(path: str, data: str | bytes) -> None:
    check_target(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())  # a full disk fails here, before the old file is replaced
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


def write_csv(path: str, rows: list) -> None:
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    write_atomic(path, buf.getvalue())


def write_figure(fig, path: str, **kw) -> None:
    """fig.savefig into memory, then write_atomic: a full disk never leaves half a PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format=os.path.splitext(path)[1].lstrip(".") or "png", **kw)
    write_atomic(path, buf.getvalue())


def append_jsonl(path: str, row: dict) -> None:
    """Append one JSON line. A torn last line (a run killed mid-write, a full disk) is ended first,
    so it never merges with the new record; readers skip it (read_jsonl)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    line = (json.dumps(row) + "\n").encode()
    with open(path, "ab") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # appenders in turn: none reads the end while another writes it
        try:
            if f.tell() > 0:
                with open(path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":
                        line = b"\n" + line
            f.write(line)
            f.flush()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_json(path: str) -> dict:
    """The JSON object in `path`, or a ValueError saying why not (not JSON, nested too deep, not
    UTF-8, not an object). OSError (missing, unreadable) passes through."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, RecursionError) as e:
        raise ValueError(f"{type(e).__name__}: {str(e)[:80]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object but {type(data).__name__}")
    return data


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


def check_output_dir(folder: str, flag: str) -> None:
    """Before any work: `folder` is a folder we can write files in, or can be made in its nearest
    existing parent. Leaves nothing behind (a bad input writes nothing)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"{flag} {folder} exists and is not a folder")
    here = os.path.abspath(folder)
    while not os.path.exists(here):
        here = os.path.dirname(here)
    if not os.path.isdir(here):
        raise UsageError(f"{flag} {folder} cannot be made: {here} is a file")
    try:
        os.rmdir(tempfile.mkdtemp(dir=here, prefix=".write-test-"))
    except OSError as e:
        raise UsageError(f"{flag} {folder} is not writable ({e.strerror})")


def check_output(path: str, flag: str) -> None:
    """Before any work: `path` is a regular file or a new name in a writable folder."""
    if not path or path.endswith(os.sep) or os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} must name a file, not a folder")
    check_target(path)
    check_output_dir(os.path.dirname(os.path.abspath(path)), f"{flag}'s folder")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path} is not writable")


def check_outputs(folder: str, names, flag: str) -> None:
    """Before any work: `folder` is writable and none of its files `names` is a folder or a device."""
    check_output_dir(folder, flag)
    for name in names:
        check_target(os.path.join(folder, name))


@contextlib.contextmanager
def locked(path: str):
    """An exclusive flock on `path` while the block runs (another process waits for it); the OS
    releases it if the holder dies."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# Cached folders (the tokenizer and the packed data) that are checked before they are trusted
# ---------------------------------------------------------------------------------------------

MANIFEST = "cache_manifest.json"


def folder_manifest(folder: str) -> dict:
    """{relative path: [size, sha1]} of every file under `folder` but the manifest itself."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if rel == MANIFEST:
                continue
            digest = hashlib.sha1()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            out[rel] = [os.path.getsize(path), digest.hexdigest()]
    return out


def cache_problem(folder: str) -> str | None:
    """Why a cached folder cannot be trusted (None if it can): a file missing, cut short or changed
    since it was written. A folder without a manifest (written before manifests) is not judged."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            want = json.load(f)
    except (OSError, ValueError, RecursionError):
        return f"{MANIFEST} is damaged"
    if not isinstance(want, dict):
        return f"{MANIFEST} is damaged"
    have = folder_manifest(folder)  # files added since (a library's own cache files) are not judged
    for rel in sorted(want):
        if want[rel] != have.get(rel):
            return f"{rel} is {'missing' if rel not in have else 'not what was written'}"
    return None


def load_cached(folder: str, load):
    """load(folder) if `folder` exists and is whole, else None (a damaged folder is removed, with
    a line saying why, so the caller rebuilds it). Call it under locked(): the caller writes next."""
    if not os.path.isdir(folder):
        return None
    problem = cache_problem(folder)
    if problem is None:
        try:
            out = load(folder)
        except Exception as e:  # each library raises its own type for a damaged file
            problem = f"it does not load ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})"
        else:
            if not os.path.isfile(os.path.join(folder, MANIFEST)):  # an older cache that loads: trust it from now on
                write_json(os.path.join(folder, MANIFEST), folder_manifest(folder))
            return out
    print(f"the cache {folder} is damaged ({problem}); rebuilding it", flush=True)
    shutil.rmtree(folder)
    return None


def save_cached(folder: str, save) -> None:
    """save(tmp) into a unique temporary folder beside `folder`, its manifest, then one rename."""
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix="." + os.path.basename(folder) + ".", suffix=".tmp")
    try:
        save(tmp)
        write_json(os.path.join(tmp, MANIFEST), folder_manifest(tmp))
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
