"""The one MIME walker: part offsets, ENVELOPE, BODY/BODYSTRUCTURE, sections, decoding.

Shared by IMAP FETCH and SEARCH and the index cache.  ``analyze`` runs once per saved message
(delivery, APPEND) and its results go into the index cache, so a FETCH of metadata never reads
a body.  Everything works on the message bytes as stored (CRLF or bare LF line ends) and never
raises on malformed input.

    a = analyze(data)                      # at save time: cached envelope, bodystructure...
    root = Part.from_json(cached_parts)    # later, from the cache
    get_section(data, root, Section((2,), "MIME"))

Modules: ``parser`` (splitter, Part, find_part), ``imap`` (IMAP strings, ENVELOPE,
BODYSTRUCTURE), ``sections`` (BODY[...] contents, transfer decoding, sizes), ``text`` (RFC 2047
and charsets for SEARCH), ``analysis`` (what the cache keeps).  Behaviour follows RFC 3501 /
9051, RFC 2045-2047 and RFC 2231, and Dovecot 2.3 where the RFCs leave a choice.
"""

from .analysis import CACHED_HEADER_FIELDS, Analysis, analyze
from .imap import bodystructure, envelope, imap_string, parse_addresses
from .parser import MAX_DEPTH, MAX_PARTS, Part, find_part, parse
from .sections import (Section, UnknownEncoding, crlf, decode_body, get_section, header_fields,
                       vsize)
from .text import decode_words, decoded_headers, part_text, search_text

__all__ = [
    "Analysis", "CACHED_HEADER_FIELDS", "MAX_DEPTH", "MAX_PARTS", "Part", "Section",
    "UnknownEncoding", "analyze", "bodystructure", "crlf", "decode_body", "decode_words",
    "decoded_headers", "envelope", "find_part", "get_section", "header_fields", "imap_string",
    "parse", "parse_addresses", "part_text", "search_text", "vsize",
]
