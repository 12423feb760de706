"""Quota warnings: when a user's usage crosses a configured threshold upward, a warning mail is
delivered to the user's INBOX and/or a script runs with the username and the percentage.

As in Dovecot only the first crossed warning (in configuration order) fires for one change, so
admins list the highest threshold first.  The warning mail is saved past the quota check (a
full mailbox is exactly when it must arrive) but counted like any other message.  The script
runs through ``reactor.spawnProcess``: nothing waits for it, and its failure is logged.
"""

from __future__ import annotations

import email.header
import email.utils
import os
import uuid

from twisted.internet import protocol, reactor
from twisted.logger import Logger

log = Logger(namespace="mailserver.quota")


class _ScriptProtocol(protocol.ProcessProtocol):
    """Logs how a warning script ended (its output is dropped, its failure is not)."""

    def __init__(self, script: str, username: str):
        self.script, self.username = script, username

    def processEnded(self, reason):
        code = getattr(reason.value, "exitCode", None)
        if code:
            log.error("quota warning script {script} for {user} failed: exit status {code}",
                      script=self.script, user=self.username, code=code)
        elif code is None:
            log.error("quota warning script {script} for {user} failed: {reason}",
                      script=self.script, user=self.username, reason=str(reason.value))


class Warnings:
    """The ``[quota] warnings`` tables (validated: resource, percent, message, subject, script)."""

    def __init__(self, tables: list, hostname: str):
        self.tables = list(tables)
        self.hostname = hostname

    @classmethod
    def from_config(cls, config) -> "Warnings | None":
        """None when none are configured (the quota code then skips the usage re-read)."""
        tables = config.quota.warnings
        return cls(tables, config.server.hostname) if tables else None

    async def after_growth(self, quota, user, size: int, count: int) -> None:
        """Called after usage grew by ``size`` bytes and ``count`` messages; fires the first
        warning whose threshold lies between the usage before and after.  Never raises."""
        try:
            rules = await quota.rules(user.name)
            limits = rules.limits()
            after = await quota.usage(user, rules)
            before = (after[0] - size, after[1] - count)
            for table in self.tables:
                index = 0 if table["resource"] == "storage" else 1
                limit = limits.storage if index == 0 else limits.messages
                if limit is None:
                    continue
                threshold = limit * table["percent"] / 100
                if before[index] < threshold <= after[index]:
                    await self._fire(quota, user, table)
                    return
        except Exception:
            log.failure("quota warning for {user} failed", user=user.name)

    async def _fire(self, quota, user, table: dict) -> None:
        percent = str(table["percent"])
        log.info("quota warning for {user}: {resource} crossed {percent}%", user=user.name,
                 resource=table["resource"], percent=percent)
        if table["script"]:
            self._run(table["script"], user.name, percent)
        if table["message"]:
            data = self.message(user.name, table, percent)
            tx = user.begin_save("INBOX")       # the inner user: no quota check
            try:
                await tx.add(data)
                await tx.commit()
            except BaseException:
                await tx.rollback()
                raise
            # Counted, so usage matches a recount; not through ``update``: no warning about a warning.
            from mailserver.storage import mime
            from mailserver.storage.quota import MESSAGES_KEY, STORAGE_KEY
            await quota.dict.transaction(user.name, increments={STORAGE_KEY: mime.vsize(data), MESSAGES_KEY: 1})

    def _run(self, script: str, username: str, percent: str) -> None:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
        try:
            reactor.spawnProcess(_ScriptProtocol(script, username), script, [script, username, percent], env=env)
        except Exception as e:
            log.error("quota warning script {script} for {user} could not start: {error}",
                      script=script, user=username, error=str(e))

    def message(self, username: str, table: dict, percent: str) -> bytes:
        """The warning mail (headers and text, CRLF line ends)."""
        text = table["message"].replace("%u", username).replace("%p", percent)
        subject = table["subject"].replace("%u", username).replace("%p", percent)
        if not subject.isascii():
            subject = email.header.Header(subject, "utf-8").encode()     # RFC 2047
        lines = [f"From: Mail Delivery System <MAILER-DAEMON@{self.hostname}>",
                 f"To: <{username}>",
                 f"Subject: {subject}",
                 f"Date: {email.utils.formatdate(localtime=False)}",
                 f"Message-ID: <{uuid.uuid4().hex}@{self.hostname}>",
                 "Auto-Submitted: auto-generated",
                 "MIME-Version: 1.0",
                 "Content-Type: text/plain; charset=utf-8",
                 "Content-Transfer-Encoding: 8bit",
                 "",
                 *text.splitlines()]
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")
