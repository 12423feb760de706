"""LMTP (RFC 2033): local delivery from an MTA into users' INBOXes."""

from mailserver.protocols.lmtp.server import LMTPFactory, LMTPServer


def build_factory(ctx, clock=None) -> LMTPFactory:
    """The LMTP protocol factory for the server's listeners (``clock``: the reactor, for tests)."""
    return LMTPFactory(ctx, clock)


__all__ = ["build_factory", "LMTPServer", "LMTPFactory"]
