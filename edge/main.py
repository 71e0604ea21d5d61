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


def main(config_path, port=None):
    import asyncio

    from edge import config
    from edge.agent import Agent, AgentCrashed

    try:
        cfg = config.load(config_path)
    except config.ConfigError as exc:
        print("config error:", exc)
        sys.exit(2)
    port = port or make_port()
    agent = Agent(cfg, port)
    try:
        asyncio.run(agent.run())
    except AgentCrashed as exc:
        port.log("agent crashed: %s" % exc)
        port.reboot()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "config.json")
