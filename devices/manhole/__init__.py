"""Smart manhole lids reporting JSON over MQTT from an NB-IoT module; see README.md."""
