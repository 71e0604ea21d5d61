"""Infrared body-temperature screening stations: NMEA-like ASCII lines on a UART."""
