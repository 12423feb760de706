"""The login policy pieces: network lists, peer parsing, the penalty on a controlled clock."""

from mailserver.auth.policy import NetworkList, Penalty, host_of


def test_host_of():
    assert host_of("192.0.2.7:40000") == "192.0.2.7"
    assert host_of("[2001:db8::1]:993") == "2001:db8::1"
    assert host_of("UNIXAddress") == "UNIXAddress"


def test_network_list():
    nets = NetworkList(["127.0.0.0/8", "::1", "192.0.2.0/24"])
    assert "127.0.0.1" in nets and "::1" in nets and "192.0.2.200" in nets
    assert "::ffff:127.0.0.1" in nets                 # IPv4-mapped
    assert "198.51.100.1" not in nets and "" not in nets and "not-an-ip" not in nets
    assert "127.0.0.1" not in NetworkList([])


def test_penalty_sequence_forget_and_reset():
    now = [1000.0]
    p = Penalty(threshold=3, initial=2.0, maximum=15.0, forget=3600.0, user_max_failures=5,
                clock=lambda: now[0])
    host = "198.51.100.9"
    for _ in range(3):
        assert p.delay(host) == 0.0
        p.failed(host, "alice")
    assert p.delay(host) == 2.0                       # 3 failures: 2 s
    now[0] += 1.5
    assert p.delay(host) == 0.5                       # counted from the last failure
    p.failed(host, "alice")
    assert p.delay(host) == 4.0
    for _ in range(5):
        p.failed(host, "bob")
    assert p.delay(host) == 15.0                      # capped
    assert p.user_locked("bob", host) and not p.user_locked("alice", host)
    p.succeeded(host)
    assert p.delay(host) == 0.0 and p.user_locked("bob", host)     # a success does not unlock a user
    now[0] += 3601
    assert not p.user_locked("bob", host)


def test_exempt_and_bounded():
    p = Penalty(threshold=0, initial=1.0, exempt=NetworkList(["10.0.0.0/8"]))
    p.failed("10.1.2.3", "x")
    assert p.delay("10.1.2.3") == 0.0 and not p.user_locked("x", "10.1.2.3")
    import mailserver.auth.policy as policy
    old, policy.MAX_TRACKED = policy.MAX_TRACKED, 10
    try:
        for i in range(50):
            p.failed(f"192.0.2.{i}", f"u{i}")
        assert len(p._hosts) <= 10 and len(p._users) <= 10
    finally:
        policy.MAX_TRACKED = old
