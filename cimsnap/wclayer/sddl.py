"""SDDL → self-relative SECURITY_DESCRIPTOR, for legacy ``MSWINDOWS.sd`` PAX records.

Windows layers written before ``MSWINDOWS.rawsd`` existed carry the SD as an SDDL string
that hcsshim converts with ``ConvertStringSecurityDescriptorToSecurityDescriptorW``.
This module converts the common subset on any OS:

* components ``O:`` owner, ``G:`` group, ``D:`` DACL, ``S:`` SACL, each at most once, in
  any order;
* ACL flags ``P`` (protected), ``AI`` (auto-inherited), ``AR`` (auto-inherit required) and
  ``NO_ACCESS_CONTROL`` (a present but NULL ACL); ``D:`` with no ACE is an empty ACL;
* ACEs ``(type;flags;rights;;;sid)`` of type ``A`` (allow), ``D`` (deny), ``AU`` (audit),
  ``AL`` (alarm) and ``ML`` (mandatory label);
* ACE flags ``CI OI NP IO ID SA FA``; rights as ``0x`` hex or concatenated letter codes
  (generic ``GA GR GW GX``, standard ``RC SD WD WO``, file ``FA FR FW FX``, registry ``KA
  KR KW KX``, directory-service ``CC DC LC SW RP WP DT LO CR``, ``AS MA``, label ``NR NW
  NX``);
* SIDs as ``S-1-…`` literals or the two-letter aliases of fixed well-known SIDs
  (:data:`SID_ALIASES`).

Not supported, each raising :class:`LayerFormatError` naming the construct and its
position: object ACEs (``OA OD OU OL``: they need GUIDs), conditional/callback and
resource-attribute ACEs (``XA XD XU ZA RA SP``), non-empty object GUID fields, domain-
relative aliases (``DA DU EA …``: they need the machine's domain SID), decimal rights and
whitespace inside the string.

Output layout follows Windows' self-relative form: header, SACL, DACL, owner, group; ACL
revision 2 (ACL_REVISION). The result is checked with the same structural validator as
``MSWINDOWS.rawsd``.
"""

from __future__ import annotations

import re
from typing import Final

from cimsnap.hive import cells as C
from cimsnap.hive.security import security_descriptor_problem
from cimsnap.wclayer.errors import LayerFormatError

__all__ = ["ACE_TYPES", "SID_ALIASES", "sddl_to_security_descriptor", "sid_to_bytes"]

#: Fixed well-known SIDs by SDDL alias ([MS-DTYP] 2.5.1.1); domain-relative ones excluded.
SID_ALIASES: Final[dict[str, str]] = {
    "AA": "S-1-5-32-579",
    "AC": "S-1-15-2-1",
    "AN": "S-1-5-7",
    "AO": "S-1-5-32-548",
    "AU": "S-1-5-11",
    "BA": "S-1-5-32-544",
    "BG": "S-1-5-32-546",
    "BO": "S-1-5-32-551",
    "BU": "S-1-5-32-545",
    "CD": "S-1-5-32-574",
    "CG": "S-1-3-1",
    "CO": "S-1-3-0",
    "CY": "S-1-5-32-569",
    "ED": "S-1-5-9",
    "ER": "S-1-5-32-573",
    "HA": "S-1-5-32-578",
    "HI": "S-1-16-12288",
    "IS": "S-1-5-32-568",
    "IU": "S-1-5-4",
    "LS": "S-1-5-19",
    "LU": "S-1-5-32-559",
    "LW": "S-1-16-4096",
    "ME": "S-1-16-8192",
    "MU": "S-1-5-32-558",
    "NO": "S-1-5-32-556",
    "NS": "S-1-5-20",
    "NU": "S-1-5-2",
    "OW": "S-1-3-4",
    "PO": "S-1-5-32-550",
    "PS": "S-1-5-10",
    "PU": "S-1-5-32-547",
    "RC": "S-1-5-12",
    "RD": "S-1-5-32-555",
    "RE": "S-1-5-32-552",
    "RM": "S-1-5-32-580",
    "RU": "S-1-5-32-554",
    "SI": "S-1-16-16384",
    "SO": "S-1-5-32-549",
    "SS": "S-1-18-2",
    "SU": "S-1-5-6",
    "SY": "S-1-5-18",
    "WD": "S-1-1-0",
    "WR": "S-1-5-33",
}

#: ACE type codes ([MS-DTYP] 2.4.4.1) of the supported SDDL ACE strings.
ACE_TYPES: Final[dict[str, int]] = {"A": 0x00, "D": 0x01, "AU": 0x02, "AL": 0x03, "ML": 0x11}
_UNSUPPORTED_ACE_TYPES: Final = frozenset(
    ("OA", "OD", "OU", "OL", "XA", "XD", "XU", "ZA", "RA", "SP")
)
_ACE_FLAGS: Final[dict[str, int]] = {
    "OI": 0x01,
    "CI": 0x02,
    "NP": 0x04,
    "IO": 0x08,
    "ID": 0x10,
    "SA": 0x40,
    "FA": 0x80,
}
_RIGHTS: Final[dict[str, int]] = {
    "GA": 0x10000000,
    "GX": 0x20000000,
    "GW": 0x40000000,
    "GR": 0x80000000,
    "SD": 0x00010000,
    "RC": 0x00020000,
    "WD": 0x00040000,
    "WO": 0x00080000,
    "AS": 0x01000000,
    "MA": 0x02000000,
    "FA": 0x001F01FF,
    "FR": 0x00120089,
    "FW": 0x00120116,
    "FX": 0x001200A0,
    "KA": 0x000F003F,
    "KR": 0x00020019,
    "KW": 0x00020006,
    "KX": 0x00020019,
    "CC": 0x00000001,
    "DC": 0x00000002,
    "LC": 0x00000004,
    "SW": 0x00000008,
    "RP": 0x00000010,
    "WP": 0x00000020,
    "DT": 0x00000040,
    "LO": 0x00000080,
    "CR": 0x00000100,
    "NW": 0x00000001,
    "NR": 0x00000002,
    "NX": 0x00000004,
}
_LABEL_RIGHTS: Final = {"NW": 0x1, "NR": 0x2, "NX": 0x4}

SE_DACL_PRESENT: Final = C.SE_DACL_PRESENT
SE_SACL_PRESENT: Final = C.SE_SACL_PRESENT
SE_SELF_RELATIVE: Final = C.SE_SELF_RELATIVE
#: ACL flag letters → control bits (DACL value, SACL value).
_ACL_FLAGS: Final[dict[str, tuple[int, int]]] = {
    "P": (0x1000, 0x2000),
    "AI": (0x0400, 0x0800),
    "AR": (0x0100, 0x0200),
}
_ACL_REVISION: Final = 2
_SID_LITERAL: Final = re.compile(r"S-1-(0[xX][0-9a-fA-F]{1,12}|[0-9]{1,15})((?:-[0-9]{1,10})*)")
_COMPONENT: Final = re.compile(r"([OGDS]):")
_SD_HEADER = C.SD_HEADER_FAST.struct
_ACL_HEADER = C.ACL_HEADER_FAST.struct
_ACE_HEADER = C.ACE_HEADER_FAST.struct
_SID_HEADER = C.SID_HEADER_FAST.struct


def _error(what: str, sddl: str, position: int) -> LayerFormatError:
    shown = sddl if len(sddl) <= 80 else sddl[:77] + "..."
    return LayerFormatError(f"SDDL {shown!r}: {what} at position {position}")


def sid_to_bytes(text: str) -> bytes:
    """Binary SID of an ``S-1-…`` literal or a well-known alias; LayerFormatError else."""
    sid, end = _parse_sid(text, 0)
    if end != len(text):
        raise _error(f"trailing characters after SID {text[:end]!r}", text, end)
    return sid


def _parse_sid(s: str, position: int) -> tuple[bytes, int]:
    literal = _SID_LITERAL.match(s, position)
    if literal:
        authority_text = literal.group(1)
        authority = (
            int(authority_text, 0) if authority_text[:2] in ("0x", "0X") else int(authority_text)
        )
        subs = [int(part) for part in literal.group(2).split("-")[1:]]
        if authority >= 1 << 48 or len(subs) > 15 or any(sub > 0xFFFFFFFF for sub in subs):
            raise _error(f"SID {literal.group(0)!r} out of range", s, position)
        head = _SID_HEADER.pack(1, len(subs), authority.to_bytes(6, "big"))
        return head + b"".join(sub.to_bytes(4, "little") for sub in subs), literal.end()
    alias = s[position : position + 2]
    if alias in SID_ALIASES:
        sid, _ = _parse_sid(SID_ALIASES[alias], 0)
        return sid, position + 2
    raise _error(f"unsupported or unknown SID {alias!r}", s, position)


def _parse_rights(text: str, s: str, position: int, ace_type: int) -> int:
    if text[:2] in ("0x", "0X"):
        try:
            value = int(text[2:], 16)
        except ValueError:
            raise _error(f"bad hex rights {text!r}", s, position) from None
        if value > 0xFFFFFFFF:
            raise _error(f"rights {text!r} exceed 32 bits", s, position)
        return value
    if len(text) % 2:
        raise _error(f"unsupported rights {text!r}", s, position)
    mask = 0
    table = _LABEL_RIGHTS if ace_type == ACE_TYPES["ML"] else _RIGHTS
    for i in range(0, len(text), 2):
        code = text[i : i + 2]
        if code not in table:
            raise _error(f"unsupported access right {code!r}", s, position + i)
        mask |= table[code]
    return mask


def _parse_ace(s: str, position: int) -> tuple[bytes, int]:
    """Parse ``(…)`` at ``position`` (the '('); return the ACE bytes and the next position."""
    end = s.find(")", position)
    if end < 0:
        raise _error("ACE without a closing ')'", s, position)
    fields = s[position + 1 : end].split(";")
    if len(fields) != 6:
        raise _error(
            f"ACE with {len(fields)} fields (expected 6; conditional and resource ACEs are "
            "not supported)",
            s,
            position,
        )
    type_text, flag_text, rights_text, object_guid, inherit_guid, sid_text = fields
    if type_text in _UNSUPPORTED_ACE_TYPES or type_text not in ACE_TYPES:
        raise _error(f"unsupported ACE type {type_text!r}", s, position + 1)
    ace_type = ACE_TYPES[type_text]
    flags = 0
    if len(flag_text) % 2:
        raise _error(f"unsupported ACE flags {flag_text!r}", s, position)
    for i in range(0, len(flag_text), 2):
        code = flag_text[i : i + 2]
        if code not in _ACE_FLAGS:
            raise _error(f"unsupported ACE flag {code!r}", s, position)
        flags |= _ACE_FLAGS[code]
    mask = _parse_rights(rights_text, s, position, ace_type)
    if object_guid or inherit_guid:
        raise _error("object GUIDs in an ACE are not supported", s, position)
    sid, sid_end = _parse_sid(sid_text, 0)
    if sid_end != len(sid_text):
        raise _error(f"trailing characters after the ACE's SID {sid_text!r}", s, position)
    size = _ACE_HEADER.size + 4 + len(sid)
    body = _ACE_HEADER.pack(ace_type, flags, size) + mask.to_bytes(4, "little") + sid
    return body, end + 1


def _parse_acl(s: str, position: int, sacl: bool) -> tuple[int, bytes | None, int]:
    """Parse ACL flags and ACEs; return (control bits, ACL bytes or None if NULL, end)."""
    control = SE_SACL_PRESENT if sacl else SE_DACL_PRESENT
    null_acl = False
    while position < len(s) and s[position] != "(" and not _COMPONENT.match(s, position):
        if s.startswith("NO_ACCESS_CONTROL", position):
            null_acl = True
            position += len("NO_ACCESS_CONTROL")
            continue
        for flag in ("AI", "AR", "P"):
            if s.startswith(flag, position):
                control |= _ACL_FLAGS[flag][1 if sacl else 0]
                position += len(flag)
                break
        else:
            raise _error(f"unsupported ACL flag {s[position : position + 2]!r}", s, position)
    aces = []
    while position < len(s) and s[position] == "(":
        ace, position = _parse_ace(s, position)
        aces.append(ace)
    if null_acl:
        if aces:
            raise _error("NO_ACCESS_CONTROL with ACEs", s, position)
        return control, None, position
    size = _ACL_HEADER.size + sum(len(ace) for ace in aces)
    if size > 0xFFFF or len(aces) > 0xFFFF:
        raise _error("ACL larger than 64 KiB", s, position)
    return (
        control,
        _ACL_HEADER.pack(_ACL_REVISION, 0, size, len(aces), 0) + b"".join(aces),
        (position),
    )


def sddl_to_security_descriptor(sddl: str) -> bytes:
    """Convert an SDDL string to a self-relative security descriptor.

    Raises :class:`LayerFormatError` naming the unsupported or malformed construct and its
    position (see the module docstring for the subset).
    """
    position = 0
    parts: dict[str, bytes | None] = {}
    control = SE_SELF_RELATIVE
    if not sddl:
        raise _error("empty string", sddl, 0)
    while position < len(sddl):
        component = _COMPONENT.match(sddl, position)
        if not component:
            raise _error(
                f"expected O:, G:, D: or S:, found {sddl[position : position + 2]!r}",
                sddl,
                position,
            )
        letter = component.group(1)
        if letter in parts:
            raise _error(f"{letter}: given twice", sddl, position)
        position = component.end()
        if letter in "OG":
            sid, position = _parse_sid(sddl, position)
            parts[letter] = sid
        else:
            bits, acl, position = _parse_acl(sddl, position, sacl=letter == "S")
            control |= bits
            parts[letter] = acl
    layout = bytearray(_SD_HEADER.size)
    offsets = {"O": 0, "G": 0, "S": 0, "D": 0}
    for letter in ("S", "D", "O", "G"):
        body = parts.get(letter)
        if body:
            offsets[letter] = len(layout)
            layout += body
    if len(layout) > 0xFFFF:
        raise _error("descriptor larger than 64 KiB", sddl, 0)
    _SD_HEADER.pack_into(
        layout, 0, 1, 0, control, offsets["O"], offsets["G"], offsets["S"], offsets["D"]
    )
    result = bytes(layout)
    problem = security_descriptor_problem(result)
    if problem:  # pragma: no cover - the builder above only emits valid layouts
        raise _error(f"built an invalid descriptor ({problem})", sddl, 0)
    return result
