"""IMAP4rev1 server on Twisted transports.

Modules: ``parser`` (the one command parser), ``seqset`` (sequence sets), ``mutf7`` (mailbox
name encoding), ``names`` (mailbox names and LIST patterns), ``response`` (formatting and the
buffered writer), ``errors`` (StorageError -> response codes), ``server`` (connection, queue,
states), ``selected`` (the selected mailbox and its updates), ``commands/`` (handlers by group:
``append`` has APPEND/CATENATE/REPLACE, ``urlauth`` GENURLAUTH/URLFETCH/RESETKEY), ``fetch``
(with ``binary`` for BINARY[]), ``search``, ``urls`` (RFC 5092 IMAP URLs, URLAUTH tokens) and
``compress`` (COMPRESS=DEFLATE).
"""


def build_factory(ctx):
    """The Twisted protocol factory for IMAP connections (``ctx``: ServerContext)."""
    from .server import IMAPServerFactory
    return IMAPServerFactory(ctx)
