"""The block rig's InfluxDB poller (hil/block.py) sees each point once, whatever the window and
whichever tags exist when it first looks: a gateway with a site (more tag keys) appearing after the
first read made one stored reading look like two (a false duplicate in the verdict)."""

from __future__ import annotations

import time

import pytest

from hil.block import DB, Poller
from hil.services import InfluxDB

pytestmark = pytest.mark.integration

def test_each_point_is_seen_once_across_narrow_and_wide_reads(influxdb: InfluxDB) -> None:
    influxdb.create_database(DB)
    now_ms = int(time.time() * 1000)
    influxdb.write(DB, f"parking,gw=gw-02,sensor=P-1 occupied=true,event=1i {now_ms - 500}")
    poller = Poller(influxdb, 0.05, now_ms - 60_000)
    poller.start()
    try:
        time.sleep(0.5)  # the first reads: only gw-02, without site tags
        site = "gw=gw-01,site=a,district=b"
        influxdb.write(DB, "\n".join([
            f"parking,{site},sensor=P-1 occupied=false,event=2i {now_ms - 400}",
            f"alarm,{site},sensor=T-1,kind=thermometer,code=fever body_c=38.5 {now_ms - 300}",
            f"alarm,{site},sensor=MH-1,kind=manhole,code=lid_open open=true {now_ms - 200}",
        ]))
        time.sleep(2.6)  # narrow reads, then at least one wide read
    finally:
        poller.stop()
    assert poller.count() == 4
    stored = sorted((s[1], s[2], s[4], tuple(sorted(s[6]))) for s in poller.stored())
    assert stored == [
        ("alarm", "gw-01", "manhole", ("open",)),
        ("alarm", "gw-01", "thermometer", ("body_c",)),
        ("parking", "gw-01", "parking", ("event", "occupied")),
        ("parking", "gw-02", "parking", ("event", "occupied")),
    ]
