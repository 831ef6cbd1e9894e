"""The command line every script shares: one flag per dataclass field, one-line errors, exit codes.

    parse(cls, argv, doc, presets, extra) -> (cls(...), namespace)   flags generated from the fields
    to_argv({"mask_min": 0.001, "antithetic": True}) -> ["--mask-min", "0.001", "--antithetic"]
    cli(main)                                                        runs a script's main()

Exit codes (README, "Exit codes"): 0 done; 2 bad input (UsageError, printed as one line
`error: ...` before any work starts; also a full disk, a missing permission or too little memory,
MACHINE_ERRNOS); 3 training diverged (Diverged: the loss stopped being a
number; the last good checkpoint is kept); 130 interrupted (Ctrl-C or SIGTERM; train.py saves a
checkpoint first).

Torch-free, like config.py: `--help` and a bad flag answer without loading torch.
"""

import argparse
import dataclasses
import os
import sys
import types
import typing

# Every script imports this module before torch: OpenMP threads that spin while they wait crawl on
# a CPU shared with other jobs, so scripts wait passively unless the user chose otherwise (README,
# Performance, "On a shared or busy CPU").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse instead of giving them back to the system
    (blocks up to 32 MiB from the heap, up to 256 MiB of free heap kept). When it returns them,
    every fresh [N, V] tensor page-faults its memory in again, which can cost more than the
    arithmetic (measured in README, Performance). A no-op elsewhere, or when
    MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ already say what the user wants."""
    if not sys.platform.startswith("linux") or {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's mallopt parameters
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 256 << 20))
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False


keep_freed_memory()

EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 3, 130


class UsageError(Exception):
    """Bad input from the user: printed as one line `error: ...`, exit code 2."""


class Diverged(Exception):
    """Training stopped being a number (nan/inf loss or bound): not bad input, exit code 3."""


class Interrupted(Exception):
    """Stopped on request (SIGTERM) after saving what can be resumed: exit code 130."""


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def field_types(cls) -> dict[str, type]:
    """field -> int, float, bool or str: the annotation resolved, `X | None` read as X."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        out[name] = hint if hint in (int, float, bool, str) else str
    return out


def choices_of(f: dataclasses.Field) -> tuple | None:
    """The values a field allows: a tuple, or a registry's names (config.Registry is callable)."""
    choices = f.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def help_text(f: dataclasses.Field) -> str:
    """The field's own help, its range, and its default, as --help and the demo show them."""
    meta, bits = f.metadata, []
    if meta.get("range"):
        bits.append(f"range {meta['range']}")
    bits.append(f"default: {f.default}")
    return f"{meta.get('help', '')} ({'; '.join(bits)})".strip()


def add_args(parser: argparse.ArgumentParser, cls, skip: tuple = ()) -> None:
    """One flag per field of `cls`. Defaults stay None so presets can tell 'not given' from 'given
    the default value'; choices and help come from the field itself (config.flag)."""
    typ = field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if typ[f.name] is bool:
            parser.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, default=None,
                                help=help_text(f))
            continue
        choices = choices_of(f)
        parser.add_argument(flag_name(f.name), type=typ[f.name], default=None, help=help_text(f),
                            choices=choices, metavar=None if choices else f.name.upper())


def given(args: argparse.Namespace, cls) -> dict:
    """The fields the user set on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def parse(cls, argv=None, doc: str = "", presets=None, extra=None):
    """Parse argv into a `cls` with one flag per field: defaults <- presets(flags) <- flags.
    `extra(parser)` may add flags that are not fields (returned in the namespace too)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(parser, cls)
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    flags = given(args, cls)
    over = presets(flags) if presets is not None else {}
    return cls(**{**over, **flags}), args


def to_argv(values: dict) -> list[str]:
    """{"mask_min": 0.001, "antithetic": True, "resume": False} -> the flags that set them."""
    out = []
    for name, value in values.items():
        if isinstance(value, bool):
            out.append(flag_name(name) if value else "--no-" + flag_name(name)[2:])
        else:
            out += [flag_name(name), str(value)]
    return out


def format_config(cfg) -> str:
    rows = dataclasses.asdict(cfg)
    width = max(len(k) for k in rows)
    return "\n".join(f"  {k:<{width}} = {v}" for k, v in rows.items())


# OSError numbers that mean the machine, not the program: a full disk, no permission, a read-only
# or failing device. They end a script with one line (exit 2) like bad input does.
MACHINE_ERRNOS = {"ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EIO", "EFBIG", "EMFILE", "ENFILE", "ENOMEM",
                  "ENAMETOOLONG", "ENOTDIR", "EISDIR", "ELOOP"}


def machine_error(e: BaseException) -> str | None:
    """The one line for an error the machine caused (full disk, permissions, memory), else None."""
    import errno

    if isinstance(e, OSError) and errno.errorcode.get(e.errno) in MACHINE_ERRNOS:
        where = f" ({e.filename})" if e.filename else ""
        return f"{e.strerror or e}{where}"
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and any(
            m in str(e) for m in ("can't allocate memory", "out of memory", "Out of memory"))):
        return f"not enough memory ({str(e).splitlines()[0][:160] if str(e) else 'MemoryError'}); ask for less"
    return None


class _SigTerm:
    """While a script runs, SIGTERM (kill, docker stop, a cluster's preemption) ends it like Ctrl-C:
    exit 130 with one line. A training run replaces this with saving a checkpoint first (runs.py)."""

    def __enter__(self):
        import signal
        import threading

        self.previous = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self.previous = signal.signal(signal.SIGTERM, self.stop)
        return self

    @staticmethod
    def stop(signum, frame):
        raise Interrupted("SIGTERM")

    def __exit__(self, *exc):
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False


def cli(main_fn, argv=None) -> int:
    """Run a script's main(); each failure is one line on stderr and its exit code (module doc)."""
    try:
        with _SigTerm():
            return main_fn(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except Interrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, MemoryError, RuntimeError) as e:
        line = machine_error(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return EXIT_USAGE
