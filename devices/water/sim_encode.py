"""The host-side names of the water codec, for hosts that reach every kind the same way
(`devices.load(kind, "sim_encode")`: units for `citybrain decode`, sensor names for `simulate`).

Water's encoder, UNITS and register helpers are still defined in codec.py (so a board carries
them); this module names them for hosts until they move here.
"""

from devices.water.codec import UNITS, encode, f32, registers

__all__ = ("UNITS", "encode", "f32", "registers")
