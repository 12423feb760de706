"""METADATA (RFC 5464) storage rules: entry names, the dictionary key layout, the value
encoding, depth, limits, against the local dictionary driver."""

import pytest
import pytest_twisted
from twisted.internet import defer

from mailserver.storage import metadata as md
from mailserver.storage.errors import StorageError
from plugins.local.dict import LocalDict

GUID = "0123456789abcdef0123456789abcdef"


def run(coro):
    return pytest_twisted.blockon(defer.Deferred.fromCoroutine(coro))


@pytest.mark.parametrize("name, expected", [
    ("/private/comment", "/private/comment"),
    ("/Shared/Vendor/Example.COM/x", "/shared/vendor/example.com/x"),
    (b"/private/a-b_c.d~e", "/private/a-b_c.d~e"),
])
def test_valid_entry_names(name, expected):
    assert md.check_entry(name) == expected


@pytest.mark.parametrize("name", [
    "", "/", "comment", "/other/comment", "/private", "/shared", "/private/", "/private//x",
    "/private/x/", "/private/*", "/shared/a%b", "/private/a b", "/private/\x01", "/private/\x7f",
    "/private/é".encode("utf-8"), "/private/" + "x" * 250, "private/comment",
])
def test_invalid_entry_names(name):
    with pytest.raises(md.InvalidEntry):
        md.check_entry(name)


def test_roots_only_where_allowed():
    assert md.check_entry("/PRIVATE", root_ok=True) == "/private"
    assert md.check_entry("/shared", root_ok=True) == "/shared"
    with pytest.raises(md.InvalidEntry):
        md.check_entry("/private/", root_ok=True)


def test_key_layout():
    assert md.entry_key(None, "/private/comment") == "priv/metadata/server/private/comment"
    assert md.entry_key(GUID, "/shared/a/b") == f"priv/metadata/mailbox/{GUID}/shared/a/b"
    assert md.key_entry(md.scope_prefix(GUID), f"priv/metadata/mailbox/{GUID}/shared/a/b") == "/shared/a/b"
    for bad in ("", "../x", "a/b", "\u00e9"):
        with pytest.raises(StorageError):
            md.scope_prefix(bad)


@pytest.mark.parametrize("value", [b"", b"plain text", "Grüße".encode(), b"a\0b", b"\xff\xfe", b"t", b"b"])
def test_value_round_trip(value):
    stored = md.encode_value(value)
    assert isinstance(stored, str) and "\0" not in stored
    assert md.decode_value(stored) == value
    assert stored[0] == ("t" if b"\0" not in value and value != b"\xff\xfe" else "b")


def test_decode_rejects_foreign_values():
    for stored in ("", "xyz", "b!!"):
        with pytest.raises(StorageError):
            md.decode_value(stored)


@pytest.fixture
def store(tmp_path):
    return LocalDict(str(tmp_path / "dict"))


@pytest_twisted.ensureDeferred
async def test_depth_and_scopes(store):
    limits = md.Limits()
    pairs = [("/private/a", b"1"), ("/private/a/b", b"2"), ("/private/a/b/c", b"3"), ("/shared/a", b"4")]
    await md.set_entries(store, "u", GUID, pairs, limits)
    await md.set_entries(store, "u", None, [("/private/a", b"server")], limits)
    get = md.get_entries
    assert await get(store, "u", GUID, ["/private/a"], "0", limits) == {"/private/a": b"1"}
    assert await get(store, "u", GUID, ["/private/a"], "1", limits) == {"/private/a": b"1", "/private/a/b": b"2"}
    assert await get(store, "u", GUID, ["/private/a"], "infinity", limits) == {
        "/private/a": b"1", "/private/a/b": b"2", "/private/a/b/c": b"3"}
    assert await get(store, "u", GUID, ["/private", "/shared"], "1", limits) == {
        "/private/a": b"1", "/shared/a": b"4"}
    assert await get(store, "u", None, ["/private"], "infinity", limits) == {"/private/a": b"server"}
    # another user's space is separate
    assert await get(store, "v", GUID, ["/private", "/shared"], "infinity", limits) == {}
    # private disabled hides private entries
    assert await get(store, "u", GUID, ["/private/a"], "0", md.Limits(private=False)) == {}
    # NIL removes; remove_mailbox removes the rest
    await md.set_entries(store, "u", GUID, [("/private/a", None)], limits)
    assert "/private/a" not in await get(store, "u", GUID, ["/private"], "infinity", limits)
    assert await md.remove_mailbox(store, "u", GUID) == 3
    assert await get(store, "u", GUID, ["/private", "/shared"], "infinity", limits) == {}
    assert await get(store, "u", None, ["/private/a"], "0", limits) == {"/private/a": b"server"}


@pytest_twisted.ensureDeferred
async def test_limits(store):
    limits = md.Limits(max_value_size=10, max_entries=2, private=True)
    with pytest.raises(md.ValueTooLarge) as e:
        await md.set_entries(store, "u", GUID, [("/shared/x", b"y" * 11)], limits)
    assert e.value.limit == 10
    await md.set_entries(store, "u", GUID, [("/shared/x", b"y" * 10), ("/shared/y", b"")], limits)
    with pytest.raises(md.TooMany):
        await md.set_entries(store, "u", GUID, [("/shared/z", b"1")], limits)
    # replacing, or removing one while adding one, stays within the limit (one transaction)
    await md.set_entries(store, "u", GUID, [("/shared/x", b"2"), ("/shared/y", None), ("/shared/z", b"3")], limits)
    assert set(await md.get_entries(store, "u", GUID, ["/shared"], "1", limits)) == {"/shared/x", "/shared/z"}
    # all or nothing: a refused request changed nothing
    with pytest.raises(md.TooMany):
        await md.set_entries(store, "u", GUID, [("/shared/x", None), ("/shared/a", b"1"), ("/shared/b", b"1")],
                             limits)
    assert set(await md.get_entries(store, "u", GUID, ["/shared"], "1", limits)) == {"/shared/x", "/shared/z"}
    with pytest.raises(md.NoPrivate):
        await md.set_entries(store, "u", GUID, [("/private/x", b"1")], md.Limits(private=False))
    with pytest.raises(md.ReadOnly):
        await md.set_entries(store, "u", GUID, [(md.SPECIALUSE, b"\\Junk")], limits)
    with pytest.raises(md.ReadOnly):
        await md.set_entries(store, "u", None, [(md.ADMIN, b"mailto:x@y")], limits)


@pytest_twisted.ensureDeferred
async def test_computed_entries(store):
    limits = md.Limits(admin="mailto:postmaster@example.org")
    got = await md.get_entries(store, "u", GUID, ["/private"], "infinity", limits, {"\\Sent"})
    assert got == {"/private/specialuse": b"\\Sent"}
    assert await md.get_entries(store, "u", GUID, ["/private/specialuse"], "0", limits) == {}
    assert await md.get_entries(store, "u", None, ["/shared"], "1", limits) == {
        "/shared/admin": b"mailto:postmaster@example.org"}
    assert await md.get_entries(store, "u", None, ["/shared"], "0", limits) == {}
    assert await md.get_entries(store, "u", None, ["/shared"], "1", md.Limits()) == {}


@pytest.mark.parametrize("key, value", [("metadata_max_value_size", 0), ("metadata_max_value_size", 10**7),
                                        ("metadata_max_entries", 0), ("metadata_admin", "mailto:x\n")])
def test_config_bounds(key, value):
    from mailserver import config
    with pytest.raises(config.ConfigError, match=key):
        config.load(None, {"imap": {key: value}})
    limits = md.Limits.from_config(config.load(None, {}).imap)
    assert limits == md.Limits(64 * 1024, 256, True, "")
