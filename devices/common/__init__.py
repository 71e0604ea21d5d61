"""Pieces shared by the device codecs (CRCs, error type, Modbus RTU framing, simulator RNG)."""
