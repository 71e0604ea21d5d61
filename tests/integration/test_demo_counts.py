"""The demo's point counts in InfluxDB: `alarm` holds points of every kind, each with its own fields,
so counting it by its largest per-field count undercounts (251 alarms were shown as 219)."""

from __future__ import annotations

import pytest

from hil.demo import DB, count_points
from hil.services import InfluxDB

pytestmark = pytest.mark.integration


def test_alarm_points_of_different_kinds_are_all_counted(influxdb: InfluxDB) -> None:
    influxdb.create_database(DB)
    influxdb.write(DB, "\n".join([
        'alarm,gw=gw-01,kind=thermometer,code=fever,sensor=T-1 body_c=38.5,seq=1i 1795676000000',
        'alarm,gw=gw-01,kind=thermometer,code=fever,sensor=T-1 body_c=38.9,seq=2i 1795676001000',
        'alarm,gw=gw-01,kind=manhole,code=lid_open,sensor=MH-1 open=true,tilt_deg=70 1795676002000',
        'parking,gw=gw-01,sensor=P-1 occupied=true,event=1i 1795676000000',
    ]))
    assert count_points(influxdb, "alarm") == 3
    assert count_points(influxdb, "parking") == 1
    assert count_points(influxdb, "water") == 0
