"""POP3 (RFC 1939, RFC 2449 CAPA, RFC 5034 SASL) over the mail storage."""

from mailserver.protocols.pop3.content import check_uidl_format
from mailserver.protocols.pop3.server import POP3Factory, POP3Server


def build_factory(ctx, clock=None) -> POP3Factory:
    """The POP3 protocol factory for the server's listeners (``clock``: the reactor, for tests).
    Raises ConfigError when ``[pop3] uidl_format`` is unusable."""
    problem = check_uidl_format(ctx.config.pop3.uidl_format)
    if problem:
        from mailserver.config import ConfigError
        raise ConfigError(f"[pop3] uidl_format {ctx.config.pop3.uidl_format!r}: {problem}")
    return POP3Factory(ctx, clock)


__all__ = ["build_factory", "POP3Server", "POP3Factory"]
