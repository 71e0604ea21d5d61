"""Geomagnetic parking-bay sensors: binary frames on RS-485 or from a LoRa concentrator's UART."""
