"""The i;unicode-casemap comparator (RFC 5051), the default for SEARCH and SORT (I18NLEVEL=1,
RFC 5255).

``casemap(s)`` maps each character to its titlecase (the single-character mapping; characters
whose titlecase is several characters, such as U+00DF, stay as they are, as the simple mapping
of UnicodeData.txt has them), then applies NFKD.  Two strings are equal under the comparator when
their casemaps are equal, one contains the other when its casemap is a substring, and they sort
by the code points of their casemaps (the order of their UTF-8 octets).
"""

from __future__ import annotations

import unicodedata


class _TitleTable(dict):
    """str.translate table filled on demand: code point -> its single-character titlecase."""

    def __missing__(self, code: int) -> str:
        ch = chr(code)
        title = ch.title()
        value = self[code] = title if len(title) == 1 else ch
        return value


_TITLE = _TitleTable()


def casemap(s: str) -> str:
    """The canonical form of ``s`` under i;unicode-casemap."""
    if s.isascii():
        return s.upper()
    return unicodedata.normalize("NFKD", s.translate(_TITLE))
