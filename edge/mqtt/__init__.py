"""The gateway's MQTT 3.1.1 client: `packets` (sans-I/O bytes), `client` (asyncio), `errors`.

Kept import-free so a board that only needs packet encoding does not load asyncio; use
`from edge.mqtt.client import MQTTClient`. Documented in docs/mqtt-client.md.
"""
