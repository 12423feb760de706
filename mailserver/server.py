"""``mailserver serve``: one reactor serving IMAP, POP3 and LMTP over the configured storage.

Start-up: logging, storage (connects to its backends), authenticator, then the listeners; any
failure is one clear log line and exit status 1.  The addresses actually bound are written to
``STATE_DIR/listeners.json`` (tests and the demo read it).  SIGTERM/SIGINT: stop accepting,
let in-flight writes finish (bounded by ``[server] shutdown_timeout``), say goodbye, exit 0.
"""

from __future__ import annotations

import importlib
import json
import os
import signal

from twisted.internet import defer, reactor
from twisted.logger import Logger

from mailserver import endpoints, limits, log as logsetup, plugins
from mailserver.config import ConfigError
from mailserver.context import ServerContext
from mailserver.storage.errors import StorageError
from mailserver.tls import ServerTLS, TLSConfigError

log = Logger(namespace="mailserver.server")

PROTOCOLS = ("imap", "pop3", "lmtp")
# Sent to a connection over a limit (then closed).
REFUSALS = {"imap": b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n",
            "pop3": b"-ERR [SYS/TEMP] Too many connections, try again later.\r\n",
            "lmtp": b"421 4.7.0 Too many connections, try again later\r\n"}


class Server:
    """The server; with ``lmtp_channel`` (a file descriptor), an LMTP worker serving the
    connections the server sends over it (``mailserver.workers``)."""

    def __init__(self, config, lmtp_channel: int | None = None):
        self.config = config
        self.lmtp_channel = lmtp_channel
        self.ctx: ServerContext | None = None
        self.ports: list = []
        self.workers = None
        self.exit_code = 0
        self._stopping = False

    async def start(self) -> None:
        cfg = self.config
        tls = ServerTLS.from_config(cfg)        # first: a bad certificate fails fast
        for name in ("imap", "pop3"):
            if getattr(cfg, name).listen_tls and tls is None:
                raise ConfigError(f"[{name}] listen_tls: needs [tls] cert and key")
        storage_cls = plugins.load(plugins.MAILBOX_FORMATS, cfg.storage.format)
        storage = storage_cls.from_config(cfg, plugins)
        await storage.start()
        dictionary = plugins.load(plugins.DICTS, cfg.dict.driver).from_config(cfg)
        await dictionary.start()
        from mailserver.auth.service import build_authenticator
        auth = build_authenticator(cfg)
        if cfg.quota.enabled:
            storage = build_quota_storage(cfg, storage, dictionary, auth)
        self.ctx = ServerContext(config=cfg, storage=storage, auth=auth, dict=dictionary, tls=tls)
        limiter = limits.ConnectionLimiter.from_config(cfg)
        if self.lmtp_channel is not None:
            from mailserver import workers
            workers.serve_channel(reactor, self.lmtp_channel, self._factory("lmtp", limiter))
            log.info("LMTP worker serving the connections the server hands over")
            return
        bound = {}
        lmtp_ports = []
        lmtp_factory = None
        for name in PROTOCOLS:
            factory = self._factory(name, limiter)
            section = getattr(cfg, name)
            listeners = [(name, spec, factory) for spec in section.listen]
            if "listen_tls" in section.as_dict() and section.listen_tls:
                from twisted.protocols.tls import TLSMemoryBIOFactory
                tls_factory = TLSMemoryBIOFactory(tls, False, factory)
                tls_factory.noisy = False
                listeners += [(name + "s", spec, tls_factory) for spec in section.listen_tls]
            for label, spec, f in listeners:
                port = await endpoints.server_endpoint(reactor, spec).listen(f)
                self.ports.append(port)
                address = _address(port, spec)
                bound.setdefault(label, []).append(address)
                log.info("{protocol} listening on {address}", protocol=label.upper(), address=address)
                if label == "lmtp":
                    lmtp_ports.append((endpoints.description(spec), port))
                    lmtp_factory = f
        if cfg.lmtp.processes > 1 and lmtp_ports:       # (no LMTP listener: nothing to share)
            self._start_workers(lmtp_ports, lmtp_factory)
        _write_listeners(cfg.server.state_dir, bound)
        if tls is None and any(not spec.startswith(("127.", "[::1]", "localhost", "unix:"))
                               for name in ("imap", "pop3") for spec in getattr(cfg, name).listen):
            log.warn("no [tls] certificate: clients outside [auth] plaintext_networks {nets} cannot log in",
                     nets=cfg.auth.plaintext_networks)

    def _factory(self, name: str, limiter):
        module = importlib.import_module(f"mailserver.protocols.{name}")
        factory = module.build_factory(self.ctx)
        factory.noisy = False   # we log our own listening lines
        return limits.LimitedFactory(factory, limiter, REFUSALS[name], per_ip=name != "lmtp", name=name)

    def _start_workers(self, lmtp_ports: list, factory) -> None:
        from mailserver.workers import LMTPWorkers, shareable_ports
        cfg = self.config
        ports = shareable_ports(lmtp_ports)
        if len(ports) < len(lmtp_ports):
            log.warn("[lmtp] processes: connections to listeners other than host:port, tcp:, tcp6:, "
                     "unix: and systemd: are served by this process only")
        if not ports:
            log.warn("[lmtp] processes = {n}: no LMTP listener whose connections a worker can serve "
                     "(host:port, tcp:, tcp6:, unix: or systemd:); no workers (processes = 1 says so)",
                     n=cfg.lmtp.processes)
            return
        if cfg.path is None:
            log.warn("[lmtp] processes = {n}: workers read the server's configuration file, and it was "
                     "started without one; no workers", n=cfg.lmtp.processes)
            return
        self.workers = LMTPWorkers(reactor, os.path.abspath(cfg.path), ports, cfg.lmtp.processes - 1, factory)
        self.workers.start()

    def reload(self) -> None:
        """SIGHUP: re-read the TLS certificate and key (open sessions keep theirs).  The
        passwd-file reloads by itself when it changes."""
        if self.ctx is not None and self.ctx.tls is not None:
            self.ctx.tls.reload()
        else:
            log.info("SIGHUP: no TLS certificate to reload")
        if self.workers is not None:
            self.workers.signal_all("HUP")      # their STARTTLS certificate too

    async def stop(self) -> None:
        """Graceful stop: no new connections, wait for writes, then close what is left."""
        if self._stopping or self.ctx is None:
            return
        self._stopping = True
        self.ctx.stopping = True
        log.info("shutting down: {n} connections open", n=len(self.ctx.connections))
        if self.workers is not None:
            self.workers.stop_accepting()       # before the listening sockets close under it
        await defer.DeferredList([defer.maybeDeferred(p.stopListening) for p in self.ports])
        if self.workers is not None:
            # Each finishes its deliveries within its own shutdown_timeout.
            await self.workers.stop(self.config.server.shutdown_timeout + 10)
        storage_stop = defer.Deferred.fromCoroutine(self._stop_storage())
        timeout = reactor.callLater(self.config.server.shutdown_timeout, storage_stop.cancel)
        try:
            await storage_stop
        except defer.CancelledError:
            log.error("in-flight writes did not finish within {t}s", t=self.config.server.shutdown_timeout)
        except Exception:
            log.failure("error while stopping storage")
        finally:
            if timeout.active():
                timeout.cancel()
        for proto in list(self.ctx.connections):
            try:
                if hasattr(proto, "shutdown"):
                    proto.shutdown()
                else:
                    proto.transport.loseConnection()
            except Exception:
                log.failure("closing a connection at shutdown")
        log.info("stopped")


    async def _stop_storage(self) -> None:
        await self.ctx.storage.stop()
        if self.ctx.dict is not None:
            await self.ctx.dict.stop()


def build_quota_storage(cfg, storage, dictionary, auth):
    """``storage`` wrapped by quota (``[quota] enabled``): rules and grace from the ``[quota]``
    section, replaced slot by slot (and the grace) by the user's userdb fields (looked up
    through ``auth``)."""
    from mailserver.storage.quota import QuotaStorage
    from mailserver.storage.quota_rules import QuotaRules, grace_from_fields, slots_from_config, slots_from_fields
    from mailserver.storage.quota_warnings import Warnings
    defaults = slots_from_config(cfg.quota.rule, cfg.quota.rules)

    async def rules_for(username: str) -> QuotaRules:
        record = await auth.lookup(username)
        slots = dict(defaults)
        grace = cfg.quota.grace
        if record is not None:
            slots.update(slots_from_fields(record.extra))
            grace = grace_from_fields(record.extra) or grace
        return QuotaRules.from_slots(slots, grace)

    return QuotaStorage(storage, dictionary, rules_for, root_name=cfg.quota.root_name,
                        cache_seconds=cfg.quota.rules_cache_seconds, warnings=Warnings.from_config(cfg))


def _address(port, spec: str) -> str:
    host = port.getHost()
    if hasattr(host, "port"):
        h = host.host
        return f"[{h}]:{host.port}" if ":" in h else f"{h}:{host.port}"
    return spec


def _write_listeners(state_dir: str, bound: dict) -> None:
    try:
        os.makedirs(state_dir, 0o700, exist_ok=True)
        tmp = os.path.join(state_dir, "listeners.json.tmp")
        with open(tmp, "w") as f:
            json.dump(bound, f)
        os.replace(tmp, os.path.join(state_dir, "listeners.json"))
    except OSError as e:
        log.warn("cannot write {dir}/listeners.json: {e}", dir=state_dir, e=str(e))


def serve(config, lmtp_worker_channel: int | None = None) -> int:
    """Run until SIGTERM/SIGINT.  Returns the process exit status.  ``lmtp_worker_channel``: run
    as an LMTP worker of a server (``mailserver.workers``) on that channel."""
    logsetup.setup(config.server.log_format, config.server.log_level)
    server = Server(config, lmtp_worker_channel)

    def started_failed(failure):
        err = failure.value
        if isinstance(err, StorageError):
            log.critical("cannot start: storage unavailable: {detail}", detail=err.detail or str(err))
        elif isinstance(err, (TLSConfigError, ConfigError)):
            log.critical("cannot start: {e}", e=str(err))
        elif isinstance(err, plugins.PluginError):
            log.critical("cannot start: {e}", e=str(err))
        elif hasattr(err, "socketError") or err.__class__.__name__ == "CannotListenError":
            log.critical("cannot start: cannot listen: {e}", e=str(err))
        else:
            log.failure("cannot start", failure)
        server.exit_code = 1
        reactor.stop()

    def go():
        d = defer.Deferred.fromCoroutine(server.start())
        d.addErrback(started_failed)

    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.Deferred.fromCoroutine(server.stop()))
    reactor.callWhenRunning(go)
    signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(server.reload))
    reactor.run()
    return server.exit_code
