"""Listener specifications from the configuration turned into Twisted server endpoints."""

from __future__ import annotations

from twisted.internet.endpoints import serverFromString

from mailserver.config import _ENDPOINT_PREFIXES, split_host_port


def description(spec: str) -> str:
    """``"127.0.0.1:143"`` -> ``"tcp:143:interface=127.0.0.1"``; endpoint descriptions as they are."""
    if spec.startswith(_ENDPOINT_PREFIXES):
        return spec
    host, port = split_host_port(spec)
    if ":" in host:
        return f"tcp6:{port}:interface={host.replace(':', chr(92) + ':')}"
    return f"tcp:{port}:interface={host}"


def server_endpoint(reactor, spec: str):
    return serverFromString(reactor, description(spec))
