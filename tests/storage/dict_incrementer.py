"""Child process of the cross-process increment test: increments one counter COUNT times, each
increment its own transaction, IN_FLIGHT of them at once, through the configured driver.

    python -m tests.storage.dict_incrementer CONFIG USER KEY COUNT IN_FLIGHT

Exit 0 when every increment succeeded; otherwise the first error on stderr and exit 1.
"""

from __future__ import annotations

import sys

from twisted.internet import defer, task


async def run(reactor, config_path: str, user: str, key: str, count: int, in_flight: int) -> None:
    """Start the dictionary, run the increments in ``in_flight`` workers, stop it."""
    from mailserver import config, plugins
    cfg = config.load(config_path)
    dictionary = plugins.load(plugins.DICTS, cfg.dict.driver).from_config(cfg)
    await dictionary.start()
    left = [count]

    async def worker():
        while left[0] > 0:
            left[0] -= 1
            await dictionary.increment(user, key, 1)
    try:
        await defer.gatherResults([defer.Deferred.fromCoroutine(worker()) for _ in range(in_flight)],
                                  consumeErrors=True)
    finally:
        await dictionary.stop()
    if hasattr(dictionary, "conflicts"):       # rados: how contended the run was, for the log
        print(f"write ops {dictionary.batches}, conflicts retried {dictionary.conflicts}")


def main(argv: list[str]) -> int:
    """Entry point; the exit status."""
    config_path, user, key, count, in_flight = argv
    try:
        task.react(lambda reactor: defer.ensureDeferred(
            run(reactor, config_path, user, key, int(count), int(in_flight))))
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
