"""What a field tech runs: gateway identity and credentials, broker ACLs, device config, firmware.

The fleet registry (`fleet.json`) is the one source of truth; every other artefact (a gateway's
config.json, Mosquitto's password and ACL files, the collector's gateway table, a firmware image)
is generated from it, so they cannot disagree.
"""
