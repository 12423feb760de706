"""What every protocol factory is given: the validated configuration, the mail storage, the
authenticator, the dictionary, the TLS settings, and the set of live connections (for graceful shutdown)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ServerContext:
    config: object                 # mailserver.config.Config
    storage: object                # mailserver.storage.api.MailStorage
    auth: object                   # mailserver.auth.Authenticator
    dict: object = None            # mailserver.storage.drivers.Dict (per-user keys, shared keys)
    tls: object = None             # mailserver.tls.ServerTLS, or None without [tls] (no STARTTLS)
    connections: set = dataclasses.field(default_factory=set)
    stopping: bool = False
