"""CRCs used on the sensor buses, table-free so they cost no RAM on a board.

CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF) guards Modbus RTU frames and the parking
sensors' binary frames (the same CRC most RS-485 vendors reuse). Check value for b"123456789": 0x4B37.
"""


def crc16_modbus(data, start=0, end=-1, crc=0xFFFF):
    """CRC-16/MODBUS over data[start:end] (end=-1 means len(data)); no slicing, so no allocation."""
    if end < 0:
        end = len(data)
    for i in range(start, end):
        crc ^= data[i]
        for _ in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ 0xA001
            else:
                crc >>= 1
    return crc


def xor8(data, start=0, end=-1):
    """NMEA-style XOR of the bytes data[start:end] (end=-1 means len(data)): the thermometer line
    checksum. Over bytes, not characters, so UTF-8 station ids are covered like any other byte."""
    if end < 0:
        end = len(data)
    x = 0
    for i in range(start, end):
        x ^= data[i]
    return x
