"""The JetStream input's pure parts: topic <-> subject mapping, the stream and consumer it asks for."""

from __future__ import annotations

from nats.js import api

from collector import config as cfg
from collector import jetstream as js


def test_topic_subject_mapping_round_trips() -> None:
    assert js.topic_subject("city/gw:7/up") == "city.gw:7.up"
    assert js.topic_subject("hz/city/gw-1/status") == "hz.city.gw-1.status"
    assert js.topic_subject("city/a.b/up") == "city.a//b.up"  # NATS >= 2.10's rule; 2.9 refuses '.'
    for topic in ("city/gw:7/up", "hz/city/gw-1/alarm", "city/a.b/up"):
        assert js.subject_topic(js.topic_subject(topic)) == topic


def test_stream_and_consumer_follow_the_config() -> None:
    n = cfg.from_dict({"nats": {"replicas": 3, "max_age": "2d", "max_bytes": "1GiB", "max_ack_pending": 77,
                                "ack_wait": "9s"}}).nats
    s = js.stream_config(n, "hz/city")
    assert s.subjects == ["hz.city.*.up", "hz.city.*.alarm", "hz.city.*.status"]
    assert s.num_replicas == 3 and s.max_age == 2 * 86400 and s.max_bytes == 1024**3
    assert s.discard == api.DiscardPolicy.OLD and s.storage == api.StorageType.FILE
    c = js.consumer_config(n, "hz/city", "up")
    assert c.durable_name == "collectors-up" and c.filter_subject == "hz.city.*.up"
    assert c.max_ack_pending == 77 and c.ack_wait == 9 and c.ack_policy == api.AckPolicy.EXPLICIT
