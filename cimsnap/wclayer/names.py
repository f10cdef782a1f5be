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
"""

from __future__ import annotations

import re
from typing import Final

from cimsnap.cim.upcase import invalid_name_reason
from cimsnap.wclayer.errors import LayerFormatError

__all__ = ["ImagePaths", "component_problem"]

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
    if _RESERVED.fullmatch(name) is not None or _RESERVED.fullmatch(name.rstrip(" ")):
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
