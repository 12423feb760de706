"""The one MIME walker: part offsets, ENVELOPE, BODY/BODYSTRUCTURE, sections, decoding.

Shared by IMAP FETCH and SEARCH and the index cache.  ``analyze`` runs once per saved message
(delivery, APPEND) and its results go into the index cache, so a FETCH of metadata never reads
a body.  Everything works on the message bytes as stored (CRLF or bare LF line ends) and never
raises on malformed input.

    a = analyze(data)                      # at save time: cached envelope, bodystructure...
    root = Part.from_json(cached_parts)    # later, from the cache
    get_section(data, root, Section((2,), "MIME"))

Conventions:
- IMAP syntax (``envelope``, ``bodystructure``, ``imap_string``) is a ``str`` to be sent as
  UTF-8; literal lengths count UTF-8 bytes.  8-bit header bytes become literals.
- Bytes for the wire (``get_section``, ``header_fields``, ``decode_body`` of 7bit/8bit/qp) have
  CRLF line ends, so their sizes agree with ``vsize`` and BODYSTRUCTURE; ``get_section`` sends
  NUL as 0x80 (IMAP literals cannot hold NUL; Dovecot does the same).
- Behaviour follows RFC 3501/9051, RFC 2045-2047 and RFC 2231, and Dovecot 2.3 where the RFCs
  leave a choice (spellings as sent in BODYSTRUCTURE, RFC 2231 parameters shown joined but
  encoded, line counts, part edges).  Deliberate differences from Dovecot: an invalid
  Content-Type means text/plain (RFC 2045 5.2), the first of repeated Subject/Date/Message-ID
  fields counts, empty address-list elements are skipped, HEADER.FIELDS always ends with the
  blank line, and message/global is parsed as a message (sections, SEARCH) while
  BODYSTRUCTURE shows it as a basic part (IMAP4rev1 grammar).
- Limits: nesting ``MAX_DEPTH``, parts ``MAX_PARTS``, boundary comparisons
  ``parser.MAX_BOUNDARY_CHECKS`` (crafted input only); past them, content is kept as opaque.

Modules: ``parser`` (splitter, Part, find_part), ``imap`` (IMAP strings, ENVELOPE,
BODYSTRUCTURE), ``sections`` (BODY[...] contents, transfer decoding, sizes), ``text`` (RFC 2047
and charsets for SEARCH), ``analysis`` (what the cache keeps).
"""

from .analysis import CACHED_HEADER_FIELDS, Analysis, analyze
from .imap import bodystructure, envelope, imap_string, parse_addresses
from .parser import MAX_DEPTH, MAX_PARTS, Part, find_part, parse
from .sections import (Section, UnknownEncoding, crlf, decode_body, get_section, header_fields,
                       vsize)
from .text import decode_words, decoded_headers, part_text, preview, search_text

__all__ = [
    "Analysis", "CACHED_HEADER_FIELDS", "MAX_DEPTH", "MAX_PARTS", "Part", "Section",
    "UnknownEncoding", "analyze", "bodystructure", "crlf", "decode_body", "decode_words",
    "decoded_headers", "envelope", "find_part", "get_section", "header_fields", "imap_string",
    "parse", "parse_addresses", "part_text", "preview", "search_text", "vsize",
]
