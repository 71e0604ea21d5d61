"""The register-map vectors (tests/portable/test_regmap.py) checked against pymodbus' own
conversion, an implementation independent of devices.common.regmap."""

from __future__ import annotations

from typing import Literal

import pytest
from pymodbus.client.mixin import ModbusClientMixin

from devices.common import regmap
from devices.water.codec import WORD_CDAB
from edge.config import TYPES
from tests.portable.test_regmap import VECTORS

DT = ModbusClientMixin.DATATYPE
PYMODBUS_TYPE = {code: getattr(DT, name.upper()) for code, name in enumerate(TYPES)}


@pytest.mark.parametrize(("name", "hx", "typ", "order", "scale", "want"), VECTORS,
                         ids=[v[0] for v in VECTORS])
def test_vector_matches_pymodbus(name: str, hx: str, typ: int, order: int, scale: tuple[float, float, float],
                                 want: float) -> None:
    data = bytes.fromhex(hx)
    registers = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    # pymodbus' "little" word order is CDAB: low register first, each register big-endian.
    words: Literal["big", "little"] = "little" if order == WORD_CDAB else "big"
    raw = ModbusClientMixin.convert_from_registers(registers, PYMODBUS_TYPE[typ], word_order=words)
    assert isinstance(raw, int | float)
    mul, div, off = scale
    assert raw * mul / div + off == want
    assert regmap.value(data, 0, typ, order, mul, div, off) == want
