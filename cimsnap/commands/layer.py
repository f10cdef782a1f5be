"""``cimsnap layer``: import, export and destroy Windows container layers as CIMs.

* ``layer import LAYER.tar[.gz|.zst] --layer-dir DIR [--parent DIR ...] [--cim PATH]``:
  the compression is detected from the file's first bytes (``-`` reads stdin). Parents are
  listed nearest first, as containerd's ``parentLayerPaths``. The CIM goes where
  containerd's cimfs layout puts it, ``<DIR's parent>/cim-layers/<DIR's name>.cim``, unless
  ``--cim`` says otherwise; parent CIMs are found the same way. A failed or cancelled
  import commits nothing.
* ``layer export CIM [--parent CIM] -o OUT.tar[.gz|.zst]``: the layer tar of CIM over its
  parent; the compression follows OUT's suffix (``.gz``/``.tgz`` gzip, ``.zst``/``.zstd``
  zstd, anything else none; ``-o -`` writes an uncompressed tar to stdout). OUT appears
  only when the export succeeded. ``--source-date-epoch SECONDS`` (default: the
  environment's ``SOURCE_DATE_EPOCH`` when set and non-empty, as reproducible-build tools
  do) clamps every time in the tar later than that Unix time to it; a value that is not
  an integer, or is before 1601, is a usage error (exit 2).
* ``layer destroy DIR [--cim PATH]``: removes the layer's CIM and the region files only it
  uses (the layer directory itself is left for the caller, as hcsshim does).

On a terminal, import and export show a progress line (bytes, MB/s, entries) on stderr;
otherwise they print nothing but the result. Ctrl-C cancels (exit 130, nothing kept): an
import stops at the next entry and removes what it wrote (a second Ctrl-C stops at once,
still cleaning up); an export removes its partial output.
Exit codes: 0 success; 1 the layer, a parent or the target is not usable (the message
says what to do next); 2 bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO, Final

from cimsnap.commands import failed
from cimsnap.wclayer.compression import CompressionKind, open_compressed, open_decompressed
from cimsnap.wclayer.errors import (
    LayerBusyError,
    LayerCancelledError,
    LayerError,
    LayerExistsError,
    LayerFormatError,
    LayerParentError,
)
from cimsnap.wclayer.layer_files import cim_path_for_layer

__all__ = ["compression_for", "register"]

_COPY_CHUNK: Final = 1 << 20
_EXIT_CANCELLED: Final = 130


def register(subparsers: Any) -> None:
    """Add the ``layer`` command group to the top-level parser's subparsers."""
    layer = subparsers.add_parser("layer", help="import, export and destroy Windows CIM layers")
    sub = layer.add_subparsers(dest="layer_command", metavar="SUBCOMMAND", required=True)

    imp = sub.add_parser("import", help="import a Windows layer tar into a CIM layer")
    imp.add_argument("layer", metavar="LAYER", help="layer tar (.tar, .tar.gz, .tar.zst; - stdin)")
    imp.add_argument("--layer-dir", required=True, type=Path, metavar="DIR", help="layer directory")
    imp.add_argument(
        "--parent",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="parent layer directory, nearest first (repeat)",
    )
    imp.add_argument("--cim", type=Path, metavar="PATH", help="default: <DIR>/../cim-layers/")
    imp.set_defaults(func=_import)

    exp = sub.add_parser("export", help="write the layer tar of a CIM layer")
    exp.add_argument("cim", type=Path, metavar="CIM", help="the layer's .cim")
    exp.add_argument("--parent", type=Path, metavar="CIM", help="its parent's .cim")
    exp.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="OUT.tar[.gz|.zst], or - for stdout"
    )
    exp.add_argument(
        "--source-date-epoch",
        type=int,
        metavar="SECONDS",
        help="clamp every time later than this Unix time to it (default: $SOURCE_DATE_EPOCH)",
    )
    exp.set_defaults(func=_export)

    destroy = sub.add_parser("destroy", help="remove a layer's CIM and its own region files")
    destroy.add_argument("layer_dir", type=Path, metavar="DIR", help="layer directory")
    destroy.add_argument("--cim", type=Path, metavar="PATH", help="default: <DIR>/../cim-layers/")
    destroy.set_defaults(func=_destroy)


def compression_for(path: str) -> CompressionKind:
    """The compression an output name asks for, from its suffix."""
    lower = path.lower()
    if lower.endswith((".gz", ".tgz")):
        return "gzip"
    if lower.endswith((".zst", ".zstd")):
        return "zstd"
    return "none"


# --- progress and cancellation -------------------------------------------------------------


class _Progress:
    """A throttled one-line progress display on stderr, only when stderr is a terminal."""

    def __init__(self, verb: str, total: int | None = None) -> None:
        self.enabled = sys.stderr.isatty()
        self.verb = verb
        self.total = total
        self.start = time.monotonic()
        self.shown = 0.0
        self.source_bytes: Callable[[], int] | None = None
        self.last: tuple[int, int] | None = None

    def __call__(self, size: int, entries: int, *, final: bool = False) -> None:
        self.last = (size, entries)
        now = time.monotonic()
        if not self.enabled or (now - self.shown < 0.2 and not final):
            return
        self.shown = now
        rate = size / max(now - self.start, 1e-6) / 1e6
        line = f"\r{self.verb} {size / 1e6:,.1f} MB, {rate:,.1f} MB/s, {entries:,} entries"
        if self.total and self.source_bytes is not None:
            line += f" ({min(100.0, 100 * self.source_bytes() / self.total):.0f}% of input)"
        print(line + "   ", end="", file=sys.stderr, flush=True)

    def done(self) -> None:
        """End the progress line (with the final figures, if any were reported)."""
        if self.enabled and self.last is not None:
            self(*self.last, final=True)
            print(file=sys.stderr)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        """Ends the line before any result or error message is printed."""
        self.done()


@contextlib.contextmanager
def _cancel_on_sigint() -> Iterator[threading.Event]:
    """First Ctrl-C sets the event (the import stops at the next entry and cleans up); a
    second one interrupts at once. Outside the main thread, only the event is given."""
    cancelled = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield cancelled
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        cancelled.set()
        signal.signal(signal.SIGINT, previous)
        if sys.stderr.isatty():
            print("\ncancelling (Ctrl-C again to stop at once)...", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield cancelled
    finally:
        signal.signal(signal.SIGINT, previous)


class _Counting:
    """A binary source that counts the bytes read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data

    def readinto(self, buffer: Any, /) -> int:
        n = self.raw.readinto(buffer) or 0  # type: ignore[attr-defined]
        self.count += n
        return int(n)


# --- import --------------------------------------------------------------------------------


def _import(args: argparse.Namespace) -> int:
    from cimsnap.wclayer.importer import import_layer  # lazy: pulls in the CIM writer

    layer_dir: Path = args.layer_dir
    cim_path: Path = args.cim or cim_path_for_layer(layer_dir)
    parents: list[Path] = args.parent
    parent_cims = [cim_path_for_layer(parent) for parent in parents]
    for parent, parent_cim in zip(parents, parent_cims, strict=True):
        if not parent.is_dir():
            return failed(f"parent layer {parent}: not a directory; import it first")
        if not parent_cim.is_file():
            return failed(f"parent layer {parent}: no CIM at {parent_cim}; import that layer first")
    if cim_path.exists():
        return failed(
            f"{cim_path} exists already; run `cimsnap layer destroy {layer_dir}` first or "
            "choose another --layer-dir/--cim"
        )
    try:
        cim_path.parent.mkdir(exist_ok=True)
    except OSError as e:
        return failed(f"{cim_path.parent}: cannot create the CIM directory: {e.strerror or e}")
    try:
        source_file: BinaryIO = (
            sys.stdin.buffer if args.layer == "-" else open(args.layer, "rb")  # noqa: SIM115
        )
    except OSError as e:
        return failed(f"{args.layer}: {e.strerror or e}; give the layer tar to import")
    total = None if args.layer == "-" else os.fstat(source_file.fileno()).st_size
    progress = _Progress("imported", total)
    source = _Counting(source_file)
    progress.source_bytes = lambda: source.count
    try:
        with _cancel_on_sigint() as cancelled, progress:
            stream = open_decompressed(source)
            try:
                size = import_layer(
                    stream,
                    layer_dir,
                    cim_path,
                    parents,
                    parent_cims,
                    cancelled=cancelled,
                    progress=progress,
                )
            finally:
                stream.close()
    except LayerCancelledError:
        print(f"cimsnap: import cancelled; nothing was written to {cim_path}", file=sys.stderr)
        return _EXIT_CANCELLED
    except LayerFormatError as e:
        return failed(
            f"{args.layer}: not a valid Windows layer: {e}; nothing was imported (check the "
            "layer's digest, or re-create the layer)"
        )
    except LayerParentError as e:
        return failed(f"{e}; import the parent layers first and pass them nearest first")
    except LayerExistsError as e:
        return failed(f"{e}; run `cimsnap layer destroy {layer_dir}` first or choose another DIR")
    except LayerBusyError as e:
        return failed(f"{e}; another writer holds {cim_path.parent}; retry when it is done")
    except LayerError as e:
        return failed(f"{args.layer}: import failed: {e}")
    except OSError as e:
        return failed(f"{e.filename or args.layer}: {e.strerror or e}")
    finally:
        if source_file is not sys.stdin.buffer:
            source_file.close()
    print(f"{cim_path}: imported {size} bytes of file data")
    return 0


# --- export --------------------------------------------------------------------------------


def _export(args: argparse.Namespace) -> int:
    from cimsnap.wclayer.exporter import (  # lazy: pulls in the CIM reader
        export_layer,
        filetime_from_unix_ns,
    )

    for what, path in (("CIM", args.cim), ("parent CIM", args.parent)):
        if path is not None and not Path(path).is_file():
            return failed(f"{what} {path}: no such file; give the layer's .cim")
    epoch = args.source_date_epoch
    if epoch is None and os.environ.get("SOURCE_DATE_EPOCH", "").strip():
        try:
            epoch = int(os.environ["SOURCE_DATE_EPOCH"])
        except ValueError:
            print(
                f"cimsnap: SOURCE_DATE_EPOCH={os.environ['SOURCE_DATE_EPOCH']!r} "
                "is not an integer number of seconds",
                file=sys.stderr,
            )
            return 2
    clamp = None if epoch is None else filetime_from_unix_ns(epoch * 1_000_000_000)
    if clamp is not None and clamp < 0:
        print(f"cimsnap: source date epoch {epoch} is before 1601", file=sys.stderr)
        return 2
    progress = _Progress("exported")
    if args.output == "-":
        try:
            with progress:
                export_layer(
                    args.cim,
                    args.parent,
                    sys.stdout.buffer,
                    progress=progress,
                    source_date_epoch=clamp,
                )
                sys.stdout.buffer.flush()
        except LayerError as e:
            return failed(f"{args.cim}: export failed: {e}")
        return 0
    out = Path(args.output)
    if out.exists():
        return failed(f"{out} exists already; remove it or choose another -o")
    temporary = out.with_name(f".{out.name}.partial-{os.getpid()}")
    kind = compression_for(args.output)
    try:
        with progress, temporary.open("xb") as raw:
            sink: Any = open_compressed(raw, kind)
            try:
                stats = export_layer(
                    args.cim, args.parent, sink, progress=progress, source_date_epoch=clamp
                )
            finally:
                sink.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.link(temporary, out)
    except LayerParentError as e:
        return failed(f"{e}; pass the CIM this layer was forked from as --parent")
    except LayerError as e:
        return failed(f"{args.cim}: export failed: {e}")
    except FileExistsError:
        return failed(f"{out} appeared while exporting; nothing was replaced")
    except OSError as e:
        return failed(f"{e.filename or out}: {e.strerror or e}")
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    print(f"{out}: {stats.entries} entries ({kind})")
    return 0


# --- destroy -------------------------------------------------------------------------------


def _destroy(args: argparse.Namespace) -> int:
    from cimsnap.wclayer import destroy_cim_layer

    cim_path: Path = args.cim or cim_path_for_layer(args.layer_dir)
    if not cim_path.exists():
        print(f"cimsnap: no CIM at {cim_path}; nothing to destroy", file=sys.stderr)
        return 0
    try:
        destroy_cim_layer(cim_path)
    except OSError as e:
        return failed(f"{e.filename or cim_path}: {e.strerror or e}; nothing more was removed")
    print(f"{cim_path}: destroyed (the layer directory {args.layer_dir} is left in place)")
    return 0
