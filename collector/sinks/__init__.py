"""Where points go: InfluxDB 1.x (/write) and 2.x/3.x (/api/v2/write) over HTTP."""
