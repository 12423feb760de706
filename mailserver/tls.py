"""TLS for every protocol: the server's context factory, STARTTLS support, implicit-TLS listeners.

``ServerTLS`` builds an ``OpenSSL.SSL.Context`` from ``[tls]`` (certificate chain and key loaded
with ``cryptography``, the key checked against the certificate) and hands it to Twisted as an
``IOpenSSLContextFactory``.  Twisted asks for the context once per connection, so ``reload()``
(SIGHUP) swaps in a new context for new connections while open sessions keep theirs.  Our own
factory rather than Twisted's ``CertificateOptions``: no deprecation warnings with pyOpenSSL's
X509/PKey objects, and reloading is a pointer swap.

``is_secure(transport)`` says whether a connection runs TLS (implicit or after STARTTLS).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLContextFactory, ISSLTransport
from twisted.logger import Logger
from zope.interface import implementer

log = Logger(namespace="mailserver.tls")

_VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}


class TLSConfigError(Exception):
    """The certificate or key cannot be used; the message names the file and the problem."""


def is_secure(transport) -> bool:
    """True when ``transport`` runs TLS (an implicit-TLS listener or after STARTTLS)."""
    if transport is None:
        return False
    if ISSLTransport.providedBy(transport) or getattr(transport, "TLS", False):
        return True
    # TLSMemoryBIOProtocol (implicit TLS) provides INegotiated/ISystemHandle, not ISSLTransport.
    from twisted.protocols.tls import TLSMemoryBIOProtocol
    return isinstance(transport, TLSMemoryBIOProtocol)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(f"[tls] {what}: {path}: cannot read: {e.strerror}") from None


def _public(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def build_context(cert_path: str, key_path: str, min_version: str = "TLSv1.2", ciphers: str = "") -> SSL.Context:
    """A server context for this chain and key.  Raises TLSConfigError."""
    try:
        chain = x509.load_pem_x509_certificates(_read(cert_path, "cert"))
    except ValueError as e:
        raise TLSConfigError(f"[tls] cert: {cert_path}: no PEM certificate could be read ({e})") from None
    try:
        key = serialization.load_pem_private_key(_read(key_path, "key"), password=None)
    except (ValueError, TypeError) as e:
        raise TLSConfigError(f"[tls] key: {key_path}: not an unencrypted PEM private key ({e})") from None
    if _public(key.public_key()) != _public(chain[0].public_key()):
        raise TLSConfigError(f"[tls] key: {key_path} does not match the certificate in {cert_path} "
                             "(the server certificate must come first in the chain)")
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(_VERSIONS[min_version])
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_TICKET)
    if ciphers:
        try:
            ctx.set_cipher_list(ciphers.encode("ascii"))
        except (SSL.Error, UnicodeEncodeError) as e:
            raise TLSConfigError(f"[tls] ciphers: {ciphers!r}: no usable cipher ({e})") from None
    try:
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    except (SSL.Error, TypeError, ValueError) as e:
        raise TLSConfigError(f"[tls] {cert_path} / {key_path}: OpenSSL refused them: {e}") from None
    ctx.set_session_id(b"mailserver")
    return ctx


@implementer(IOpenSSLContextFactory)
class ServerTLS:
    """The server's TLS settings; ``getContext()`` is the current context."""

    def __init__(self, cert: str, key: str, min_version: str = "TLSv1.2", ciphers: str = ""):
        self.cert, self.key, self.min_version, self.ciphers = cert, key, min_version, ciphers
        self._context = build_context(cert, key, min_version, ciphers)

    @classmethod
    def from_config(cls, config) -> "ServerTLS | None":
        """From ``[tls]``; None when no certificate is configured.  Raises TLSConfigError."""
        t = config.tls
        if not t.cert and not t.key:
            return None
        if not t.cert or not t.key:
            raise TLSConfigError("[tls] cert and key: both are needed")
        return cls(t.cert, t.key, t.min_version, t.ciphers)

    def getContext(self) -> SSL.Context:
        return self._context

    def reload(self) -> bool:
        """Re-read certificate and key for new connections.  On a problem the old ones stay and
        the problem is logged; returns whether the new ones are in use."""
        try:
            self._context = build_context(self.cert, self.key, self.min_version, self.ciphers)
        except TLSConfigError as e:
            log.error("TLS reload failed, keeping the old certificate: {problem}", problem=str(e))
            return False
        log.info("TLS certificate reloaded from {cert}", cert=self.cert)
        return True


def start_tls(transport, tls: ServerTLS) -> None:
    """Switch a plaintext transport to TLS (what was written before goes out in the clear)."""
    transport.startTLS(tls)


# --- what protocols ask -----------------------------------------------------------------------------

def plaintext_ok(ctx, transport, peer: str) -> bool:
    """May this connection carry a password in the clear ([auth] plaintext_networks, or TLS)?"""
    from mailserver.auth.policy import host_of
    return ctx.auth.plaintext_allowed(host_of(peer), is_secure(transport))


def starttls_available(ctx, transport) -> bool:
    """STARTTLS/STLS can be offered: a certificate is configured and TLS is not running yet."""
    return getattr(ctx, "tls", None) is not None and not is_secure(transport)


def auth_capabilities(ctx, transport, peer: str, starttls: bool = True) -> list[str]:
    """IMAP's pre-login capabilities: STARTTLS (unless ``starttls`` is false: COMPRESS is
    active), LOGINDISABLED and the AUTH= mechanisms."""
    ok = plaintext_ok(ctx, transport, peer)
    caps = ["STARTTLS"] if starttls and starttls_available(ctx, transport) else []
    if not ok:
        caps.append("LOGINDISABLED")
    return caps + ["AUTH=" + m for m in ctx.auth.mechanisms(ok)]
