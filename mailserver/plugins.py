"""Plugin registry: mailbox formats, object stores, index stores, dictionaries, passdbs and userdbs are
found through Python entry points, the built-in ones exactly as a third party's would be.

A plugin class may declare ``CONFIG_SECTION = "name"`` and ``CONFIG_SCHEMA = {key: config.Key}``;
loading it makes that section known to the configuration loader.
"""

from __future__ import annotations

from importlib import metadata

MAILBOX_FORMATS = "mailserver.mailbox_formats"
OBJECT_STORES = "mailserver.object_stores"
INDEX_STORES = "mailserver.index_stores"
DICTS = "mailserver.dicts"
PASSDBS = "mailserver.passdbs"
USERDBS = "mailserver.userdbs"

GROUPS = (MAILBOX_FORMATS, OBJECT_STORES, INDEX_STORES, DICTS, PASSDBS, USERDBS)


class PluginError(Exception):
    """A plugin is not installed or failed to import."""


def _entry_points(group: str) -> dict:
    return {ep.name: ep for ep in metadata.entry_points(group=group)}


def available(group: str) -> list[str]:
    """Names registered in an entry-point group."""
    return sorted(_entry_points(group))


def load(group: str, name: str):
    """The class registered as ``name`` in ``group``; registers its config section if it has one."""
    eps = _entry_points(group)
    if name not in eps:
        raise PluginError(f"no {group} plugin named {name!r} (installed: {', '.join(sorted(eps)) or 'none'})")
    try:
        cls = eps[name].load()
    except Exception as e:  # a broken third-party plugin must be reported, not crash start-up
        raise PluginError(f"{group} plugin {name!r} failed to load: {e}") from e
    section = getattr(cls, "CONFIG_SECTION", None)
    if section:
        from mailserver import config
        config.register_section(section, cls.CONFIG_SCHEMA)
    return cls


def try_load(group: str, name: str):
    """Like ``load`` but None instead of an error (the config check reports unknown names)."""
    try:
        return load(group, name)
    except PluginError:
        return None
