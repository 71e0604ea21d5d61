"""Start the agent: `main.py` on a board calls `main("config.json")`; Linux gateways use
`citybrain gateway run` (CPython) or `micropython -m edge.main config.json` (unix port).
"""

import sys


def make_port(verbose=True):
    if sys.platform in ("linux", "darwin"):
        from edge.ports.posix import PosixPort

        return PosixPort(verbose)
    from edge.ports.board import BoardPort

    return BoardPort(verbose)


def load_config(path):
    """The validated config; `config.ConfigError` (a ValueError) if it is wrong.

    edge.config (schema, help texts, checks) is needed once, at boot: it is dropped again before
    the agent starts, which leaves a board's heap ~14 KB larger for the run.
    """
    from edge import config
    from edge.compat import unload

    try:
        return config.load(path)
    finally:
        del config
        unload("edge.config")


def _stamp(path):
    """What the config file holds now, cheaply compared: its CRC-32 (None if unreadable)."""
    from binascii import crc32

    try:
        with open(path, "rb") as f:
            return crc32(f.read())
    except OSError:
        return None


def wait_for_config(path, exc, every_s=5):
    """A board with a bad config: say so in one console line, then wait for a new file that
    validates (flashed or copied with mpremote) instead of rebooting into the same error for ever.
    Returns the new config."""
    import time

    seen = _stamp(path)
    while True:
        errors = getattr(exc, "errors", None) or [str(exc)]
        more = " (+%d more)" % (len(errors) - 1) if len(errors) > 1 else ""
        print("citybrain config error: %s%s; waiting for a new %s" % (errors[0], more, path))
        exc = errors = None
        while True:
            time.sleep(every_s)
            now = _stamp(path)
            if now != seen:
                seen = now
                break
        try:
            return load_config(path)
        except ValueError as e:
            exc = e


def main(config_path, port=None, wait_s=None):
    """Run the agent. A config error exits with status 2 on Linux (before the log counts a boot);
    on a board (or with `wait_s`) it waits for a new config, checking every `wait_s` seconds."""
    import asyncio

    if wait_s is None and sys.platform not in ("linux", "darwin"):
        wait_s = 5
    try:
        cfg = load_config(config_path)
    except ValueError as exc:
        if not wait_s:
            for line in getattr(exc, "errors", None) or [str(exc)]:
                print("config error:", line)
            sys.exit(2)
        cfg = wait_for_config(config_path, exc, wait_s)
    from edge.agent import Agent, AgentCrashed

    port = port or make_port()
    agent = Agent(cfg, port)
    del cfg  # the agent keeps only what it runs with
    try:
        asyncio.run(agent.run())
    except AgentCrashed as exc:
        port.log("agent crashed: %s" % exc)
        port.reboot()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "config.json")
