"""Water-quality monitors on Modbus RTU (RS-485): float32 register map; see README.md."""
