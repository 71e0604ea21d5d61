"""The gateway agent ("firmware"): one codebase for MicroPython boards and CPython gateways.

Everything in this package stays inside the MicroPython subset (no dataclasses, typing, match or
f-string `=`), because the same modules are compiled with mpy-cross and flashed onto boards.
"""

VERSION = "0.1.0"
