"""OAuth 2.0 token introspection (RFC 7662) for OAUTHBEARER and XOAUTH2.

The token is POSTed (``application/x-www-form-urlencoded``, ``token=...&token_type_hint=
access_token``) with the configured client id and secret as HTTP basic authentication; the JSON
answer's ``active`` says whether the token is valid, and ``username_claim`` (default ``username``)
names its user.  The call runs with urllib in the ``auth`` thread pool (no HTTP client dependency),
bounded by ``timeout`` and by the size of the answer read.  An endpoint that cannot be reached or
answers garbage is ``AuthUnavailable`` (a temporary failure, never "invalid token").
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request

from twisted.logger import Logger

from mailserver import threads
from mailserver.auth import AuthUnavailable

log = Logger(namespace="mailserver.auth.oauth2")

POOL = "auth"
MAX_ANSWER = 64 * 1024
MAX_TOKEN = 8192


class Introspector:
    def __init__(self, url: str, client_id: str = "", client_secret: str = "",
                 username_claim: str = "username", timeout: float = 10.0, ca_file: str = ""):
        self.url = url
        self.client_id = client_id
        self.client_secret = client_secret
        self.username_claim = username_claim
        self.timeout = timeout
        self._ssl = ssl.create_default_context(cafile=ca_file or None) if url.startswith("https:") else None

    @classmethod
    def from_config(cls, section) -> "Introspector":
        """From the ``[auth.oauth2]`` section.  Raises ConfigError."""
        from mailserver.config import ConfigError
        url = section.introspection_url
        if not url.startswith(("http://", "https://")):
            raise ConfigError("[auth.oauth2] introspection_url: must be an http:// or https:// URL")
        try:
            return cls(url, section.client_id, section.client_secret, section.username_claim,
                       section.timeout, section.ca_file)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"[auth.oauth2] ca_file: {e}") from None

    async def introspect(self, token: str) -> str | None:
        """The username an active token belongs to; None for an inactive or unknown token.
        Raises AuthUnavailable."""
        if not token or len(token) > MAX_TOKEN:
            return None
        answer = await threads.run(POOL, self._post, token)
        if not isinstance(answer, dict):
            raise AuthUnavailable("introspection answer is not a JSON object")
        if answer.get("active") is not True:
            return None
        user = answer.get(self.username_claim)
        if not isinstance(user, str) or not user:
            log.warn("introspection: active token without a {claim!r} field", claim=self.username_claim)
            return None
        return user

    def _post(self, token: str):
        """Blocking: the decoded JSON answer.  Raises AuthUnavailable."""
        body = urllib.parse.urlencode({"token": token, "token_type_hint": "access_token"}).encode("ascii")
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"})
        if self.client_id:
            basic = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode("utf-8")).decode("ascii")
            request.add_header("Authorization", "Basic " + basic)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._ssl) as response:
                data = response.read(MAX_ANSWER + 1)
        except urllib.error.HTTPError as e:
            raise AuthUnavailable(f"introspection endpoint answered HTTP {e.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise AuthUnavailable(f"introspection endpoint unreachable: {getattr(e, 'reason', e)}") from None
        if len(data) > MAX_ANSWER:
            raise AuthUnavailable("introspection answer too large")
        try:
            return json.loads(data)
        except ValueError:
            raise AuthUnavailable("introspection answer is not JSON") from None
