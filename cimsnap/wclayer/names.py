r"""The safe-name policy of layer import: tar names to image paths (§1.2, §5 rows 1-8).

A tar names entries with ``/``; the CIM writer takes ``\``-separated image paths. hcsshim
converts with ``filepath.FromSlash`` and checks nothing. cimsnap converts *and refuses*
every name that could escape the layer or that Windows could not hold (§5, "Recommend"):

=========================================  ==============================================
tar name                                   outcome
=========================================  ==============================================
``..`` anywhere, ``/x`` (absolute)         refused (nothing escapes the layer root)
``\`` anywhere (``Files\x``, ``\\?\``)     refused (a separator only on Windows: ambiguous)
``C:/x`` (drive letter), ``:`` elsewhere   refused (``:`` only in alternate-stream entries)
``./x``, ``a//b``, ``a/./b``               normalised to ``x``, ``a\b`` (Go keeps them; the
                                           CIM has a single spelling)
``.`` / ``./`` (the root itself)           refused (a layer cannot re-state its root)
NUL, control characters, ``<>"|?*``        refused
trailing ``.`` or space in a component     refused (Win32 strips them: two names collide)
``CON``, ``PRN``, ``AUX``, ``NUL``,        refused, also with an extension (``nul.txt``):
``COM0``-``COM9``, ``LPT0``-``LPT9``       Win32 opens the device instead
components over 255 UTF-16 units           refused (and paths over 32767, by the writer)
=========================================  ==============================================

Non-UTF-8 names never get here: the tar reader refuses them. Errors are
:class:`LayerFormatError` without an entry (the importer adds entry and offset).

:func:`image_components` and :func:`split_stream_name` check the ``\``-separated image
paths (and ``file:stream[:$DATA]`` names) that :class:`CimLayerWriter` itself receives.
"""

from __future__ import annotations

import re
from typing import Final

from cimsnap.cim.upcase import invalid_name_reason
from cimsnap.wclayer.errors import LayerFormatError

__all__ = [
    "DATA_STREAM_TYPE",
    "SEPARATOR",
    "ImagePaths",
    "component_problem",
    "image_components",
    "split_stream_name",
]

SEPARATOR: Final = "\\"
#: The only alternate stream type a layer can carry (§1.4).
DATA_STREAM_TYPE: Final = "$DATA"

_RESERVED_STEMS: Final = frozenset(("CON", "PRN", "AUX", "NUL", "COM", "LPT"))
_RESERVED: Final = re.compile(
    r"(?:CON|PRN|AUX|NUL|COM[0-9¹²³]|LPT[0-9¹²³])(?:\..*)?", re.IGNORECASE
)


def component_problem(name: str) -> str | None:
    """Why ``name`` cannot be one component of a layer path, or None if it can."""
    reason = invalid_name_reason(name)
    if reason is not None:
        return reason
    if name[-1] in ". ":
        return "name ends in a dot or a space"
    if name[:3].upper() in _RESERVED_STEMS and _RESERVED.fullmatch(name) is not None:
        return "name is a reserved Windows device name"
    return None


class ImagePaths:
    """:meth:`convert` with validated parent directories remembered (the hot path).

    Validity is a pure function of the string, so the memo never goes stale. It holds one
    entry per distinct parent directory of the layer.
    """

    __slots__ = ("_parents",)

    def __init__(self) -> None:
        self._parents: dict[str, str] = {}

    def convert(self, tar_name: str) -> str:
        """Return the image path of ``tar_name`` (module docstring), or raise."""
        parent, separator, last = tar_name.rpartition("/")
        image_parent = ""
        if separator:
            if not parent:
                raise LayerFormatError(f"{tar_name!r}: absolute path")
            memo = self._parents.get(parent)
            if memo is None:
                memo = self._parents[parent] = self._convert(parent, allow_root=True)
            image_parent = memo
        if last in ("", "."):
            return self._convert(tar_name, allow_root=False)
        problem = self._problem(last)
        if problem is not None:
            raise LayerFormatError(f"{tar_name!r}: {problem}")
        return f"{image_parent}\\{last}" if image_parent else last

    def _convert(self, tar_name: str, *, allow_root: bool) -> str:
        if tar_name.startswith("/"):
            raise LayerFormatError(f"{tar_name!r}: absolute path")
        kept = []
        for part in tar_name.split("/"):
            if part in ("", "."):
                continue
            problem = self._problem(part)
            if problem is not None:
                raise LayerFormatError(f"{tar_name!r}: {problem}")
            kept.append(part)
        if not kept and not allow_root:
            raise LayerFormatError(f"{tar_name!r}: names the layer root")
        return "\\".join(kept)

    @staticmethod
    def _problem(part: str) -> str | None:
        if part == "..":
            return "'..' escapes the layer"
        if "\\" in part:
            return "backslash in a tar name"
        if ":" in part:
            return "':' outside an alternate-stream entry (drive letter or misplaced stream)"
        return component_problem(part)


# --- image paths as the layer writer receives them ---------------------------------------


def image_components(name: str) -> list[str]:
    """Validated components of image path ``name`` (no root, ``.``, ``..``, bad names)."""
    if not name:
        return []
    components = name.split(SEPARATOR)
    for component in components:
        reason = invalid_name_reason(component)
        if reason is not None:
            raise LayerFormatError(f"{name!r}: {reason}")
    return components


def split_stream_name(name: str) -> tuple[str, str]:
    """Split ``file:stream`` or ``file:stream:$DATA`` into (file path, stream name)."""
    head, _, last = name.rpartition(SEPARATOR)
    parts = last.split(":")
    if len(parts) == 3:
        if parts[2].upper() != DATA_STREAM_TYPE:
            raise LayerFormatError(f"{name}: stream type {parts[2]!r} is not supported")
    elif len(parts) != 2:
        raise LayerFormatError(f"{name}: not an alternate stream name")
    if not parts[0] or not parts[1]:
        raise LayerFormatError(f"{name}: not an alternate stream name")
    file = f"{head}{SEPARATOR}{parts[0]}" if head else parts[0]
    image_components(file)
    reason = invalid_name_reason(parts[1])
    if reason is not None:
        raise LayerFormatError(f"{name}: stream name {reason}")
    return file, parts[1]
