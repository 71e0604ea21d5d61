"""Start the agent: `main.py` on a board calls `main("config.json")`; Linux gateways use
`citybrain gateway run` (CPython) or `micropython -m edge.main config.json` (unix port).
"""

import sys


def load_config(path, wait_s=0):
    """The validated config; `config.ConfigError` (a ValueError) if it is wrong, or with `wait_s`
    the first good config.json after it (edge.config.wait: one console line, then a re-check every
    `wait_s` seconds).

    The config `citybrain provision build` checked (edge.checked: config.json unchanged since) is
    taken without edge.config, whose names would stay interned for the whole run (~6 KB at 128
    sensors). Otherwise edge.config (schema, help texts, checks, the wait) validates it here and is
    dropped again before the agent starts, which leaves a board's heap ~14 KB larger for the run; a
    config changed since the build says so on the console first, and a board without the memory
    to check it refuses it, naming the fix.
    """
    from edge import checked
    from edge.compat import unload

    try:
        cfg = checked.load(path)
    finally:
        del checked
        unload("edge.checked")
    if type(cfg) is dict:
        return cfg
    if cfg is not None:
        print("citybrain config: %s: checking it on this gateway (costs the run ~6 KB of heap; "
              "`citybrain provision build` checks it on a computer)" % cfg)
    try:
        from edge import config

        return config.wait(path, wait_s) if wait_s else config.load(path)
    except MemoryError:
        if cfg is None:
            raise
        raise ValueError("%s: this board has not the memory to check it: run `citybrain provision "
                         "build` and flash the image" % cfg) from None
    finally:
        config = None
        unload("edge.config")
        unload("edge.checked")  # edge.config.load's


def main(path, port=None, wait_s=None, image=None):
    """Run the agent. A config error exits with status 2 on Linux (before the log counts a boot);
    on a board (or with `wait_s`) it waits for a new config, checking every `wait_s` seconds.
    `image` is the board image's hash (the boot selector passes it): it is printed on the boot line
    and reported in the status."""
    import asyncio

    if wait_s is None and sys.platform not in ("linux", "darwin"):
        wait_s = 5
    try:
        cfg = load_config(path, wait_s)
    except ValueError as exc:
        for line in getattr(exc, "errors", None) or [str(exc)]:
            print("config error:", line)
        sys.exit(2)
    from edge import VERSION
    from edge.agent import Agent, AgentCrashed

    if port is None:  # the runtime's port, verbose
        if sys.platform in ("linux", "darwin"):
            from edge.ports.posix import PosixPort

            port = PosixPort(True)
        else:
            from edge.ports.board import BoardPort

            port = BoardPort(True)
    # The boot line `citybrain provision flash` reads back after a reset (key=value words).
    print("citybrain-gw: boot gw=%s fw=%s image=%s" % (cfg["gateway_id"], VERSION, image or "-"))
    agent = Agent(cfg, port)
    agent.image = image
    del cfg  # the agent keeps only what it runs with
    try:
        asyncio.run(agent.run())
    except AgentCrashed as exc:
        port.log("agent crashed: %s" % exc)
        port.reboot()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "config.json")
