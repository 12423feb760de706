"""Bytes to text under a declared MIME charset, never failing.

Rules (what mail in the wild needs):
- labels are looked up through Python's codecs, with the aliases mail clients use in practice
  (iso-8859-1 read as windows-1252, gb2312 as gb18030, ks_c_5601-1987 as cp949...);
- only text codecs count: "rot13", "idna", "unicode_escape" and the like are refused;
- 8-bit bytes under us-ascii, an unknown or a missing charset are read as UTF-8 when they are
  valid UTF-8, else as windows-1252, else as latin-1 (every byte maps);
- bytes not valid in a declared charset: UTF-8 if they are valid UTF-8, else the declared
  charset with U+FFFD for what does not decode.
"""

from __future__ import annotations

import codecs
import functools

# Labels mail software writes where a superset is what the sender really used.
_ALIASES = {
    "us-ascii": "ascii", "ansi_x3.4-1968": "ascii", "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252", "iso_8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252",
    "l1": "cp1252", "iso-8859-15": "iso8859_15",
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "euc-cn": "gb18030",
    "ks_c_5601-1987": "cp949", "euc-kr": "cp949", "ks_c_5601": "cp949",
    "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "x-sjis": "cp932",
    "big5": "big5hkscs", "tis-620": "cp874", "iso-8859-11": "cp874",
    "iso-8859-9": "cp1254", "utf8": "utf-8", "unicode-1-1-utf-7": "utf-7",
}
# Text codecs that make no sense for mail bodies or could be abused.
_REFUSED = {"idna", "punycode", "unicode_escape", "raw_unicode_escape", "undefined",
            "charmap", "mbcs", "oem", "palmos", "unicode_internal"}
# Codecs whose pure-ASCII input decodes to itself (fast path allowed).
_ASCII_SAFE_PREFIXES = ("utf-8", "cp", "iso8859", "latin", "ascii", "gb18030", "big5", "euc",
                        "koi8", "mac", "tis", "johab", "shift_jis", "hp-roman8")


@functools.lru_cache(maxsize=256)
def codec_for(charset: str | None) -> str | None:
    """Python codec name for a MIME charset label, or None if unknown or refused."""
    if not charset:
        return None
    label = charset.strip().strip('"').strip().lower()
    label = _ALIASES.get(label, label)
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name.replace("-", "_") in _REFUSED:
        return None
    return info.name


_EBCDIC = {"cp037", "cp273", "cp424", "cp500", "cp875", "cp1026", "cp1140"}


def _ascii_safe(codec: str | None) -> bool:
    return codec is None or (codec.startswith(_ASCII_SAFE_PREFIXES) and codec not in _EBCDIC)


def guess(data: bytes) -> str:
    """Bytes of unknown charset: UTF-8 if valid, else windows-1252, else latin-1."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def to_text(data: bytes, charset: str | None) -> str:
    """Decode ``data`` declared as ``charset`` (None: undeclared); never raises."""
    codec = codec_for(charset)
    if data.isascii() and _ascii_safe(codec):
        return data.decode("ascii")
    if codec is None or codec == "ascii":
        return guess(data)
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        pass
    except Exception:  # a codec failing in an unexpected way must not break delivery or SEARCH
        return guess(data)
    if codec == "cp1252":
        return data.decode("latin-1")
    if codec != "utf-8":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return data.decode(codec, errors="replace")
