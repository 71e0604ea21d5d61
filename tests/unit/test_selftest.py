"""The self-test's reading of a board's console: tolerant of lines it does not know (the agent's
start-up summary, MicroPython's banner), strict about what it checks."""

from __future__ import annotations

from provisioning.selftest import judge, parse_console

BOOT = "citybrain-gw: boot gw=gw-xihu-0001 fw=0.1.0 image=3f2a9c1d0e12\r\n"


def test_boot_line_among_other_lines() -> None:
    text = ("MPY: soft reboot\r\n" + BOOT
            + "citybrain-gw: start-up: gateway=gw-xihu-0001 sources=2 opened=2 broker=mqtt.city:8883\r\n"
            + "citybrain-gw: uplink: socket error: [Errno 113] EHOSTUNREACH\r\n")
    con = parse_console(text)
    assert con.boot_line == BOOT.strip()
    assert con.facts["gw"] == "gw-xihu-0001" and con.facts["fw"] == "0.1.0"
    assert con.facts["image"] == "3f2a9c1d0e12"
    assert con.facts["sources"] == "2" and con.facts["broker"] == "mqtt.city:8883"  # kept, not needed
    assert con.uplink_errors == ["uplink: socket error: [Errno 113] EHOSTUNREACH"] and not con.fatal
    v = judge(con, gateway_id="gw-xihu-0001", image="3f2a9c1d0e12", fw="0.1.0", status=None,
              broker_checked=False)
    assert v.ok and "broker: not reached yet" in v.text()


def test_aliases_and_a_summary_line_before_the_boot_line() -> None:
    con = parse_console("citybrain-gw: gateway_id=gw-1 version=0.2.0 img=abc\ncitybrain-gw: boot gw=gw-1\n")
    assert con.facts == {"gw": "gw-1", "fw": "0.2.0", "image": "abc"} and con.boot_line


def test_failures_in_words() -> None:
    crash = parse_console(BOOT + "Traceback (most recent call last):\n  File \"main.py\"\n"
                          "ValueError: incompatible .mpy file\n")
    v = judge(crash, gateway_id="gw-xihu-0001", image="3f2a9c1d0e12", fw="0.1.0", status=None,
              broker_checked=False)
    assert not v.ok and "the board did not start" in v.text()
    other = parse_console(BOOT.replace("3f2a9c1d0e12", "000000000000")
                          + "citybrain-gw: uart2:17:16: cannot open: [Errno 19] ENODEV\n" * 3)
    v = judge(other, gateway_id="gw-xihu-0001", image="3f2a9c1d0e12", fw="0.1.0",
              status={"state": "online", "img": "000000000000"}, broker_checked=True)
    assert not v.ok
    assert "image: the board says '000000000000', expected '3f2a9c1d0e12'" in v.text()
    assert v.text().count("sensor source failed: uart2:17:16: cannot open") == 1, v.text()  # retries: once
    assert "the retained status is 'online' with image '000000000000'" in v.text()
    silent = parse_console("")
    v = judge(silent, gateway_id="g", image="i", fw="f", status=None, broker_checked=False)
    assert not v.ok and "no boot line" in v.text()
    v = judge(parse_console(BOOT), gateway_id="gw-xihu-0001", image="3f2a9c1d0e12", fw="0.1.0", status=None,
              broker_checked=True)
    assert not v.ok and "no online status from the gateway" in v.text()


def test_the_agents_up_line_counts_the_sources_it_opened() -> None:
    """The agent's start-up line (docs/gateway.md, "Console") says how many sources opened."""
    up = "citybrain-gw: up gw=gw-xihu-0001 fw=0.1.0 boot=1 sources={}/3 broker=down clock=unsynced\r\n"
    short = parse_console(BOOT + up.format(2))
    assert short.up["sources"] == "2/3" and short.up["broker"] == "down"
    v = judge(short, gateway_id="gw-xihu-0001", image="3f2a9c1d0e12", fw="0.1.0", status=None,
              broker_checked=False)
    assert not v.ok and "sensor sources: 2 of 3 opened" in v.text()
    v = judge(parse_console(BOOT + up.format(3)), gateway_id="gw-xihu-0001", image="3f2a9c1d0e12",
              fw="0.1.0", status=None, broker_checked=False)
    assert v.ok and "sensor sources: 3 of 3 opened" in v.text()


def test_a_board_without_a_clock_is_told_in_words() -> None:
    """A board whose clock is not set holds every reading (docs/gateway.md): the self-test says so
    and what to check, instead of a bare PASSED (found by the day-one fleet test, where the virtual
    boards held all their readings while their self-tests passed)."""
    up = "citybrain-gw: up gw=gw-xihu-0001 fw=0.1.0 boot=1 sources=1/1 broker=connected clock={}\r\n"
    held = judge(parse_console(BOOT + up.format("unsynced")), gateway_id="gw-xihu-0001", image="3f2a9c1d0e12",
                 fw="0.1.0", status={"state": "online", "img": "3f2a9c1d0e12", "clock_synced": False},
                 broker_checked=True)
    assert "clock: NOT set yet: the board holds its readings until it is" in held.text(), held.text()
    later = judge(parse_console(BOOT + up.format("unsynced")), gateway_id="gw-xihu-0001",
                  image="3f2a9c1d0e12", fw="0.1.0", broker_checked=True,
                  status={"state": "online", "img": "3f2a9c1d0e12", "clock_synced": True})
    assert "clock: set" in later.text() and "NOT set" not in later.text(), later.text()
    synced = judge(parse_console(BOOT + up.format("synced")), gateway_id="gw-xihu-0001", image="3f2a9c1d0e12",
                   fw="0.1.0", status=None, broker_checked=False)
    assert "clock: set" in synced.text(), synced.text()
