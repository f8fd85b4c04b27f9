"""Interop with clients nobody here wrote: Python confluent-kafka (AvroSerializer against the
stack's registry, murmur2_random, key = E.164 phone) and Kafka's own console consumer."""

import datetime as dt
import subprocess
import uuid

from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from conftest import LOCAL, ROOT, wait_until

SCHEMA = (ROOT / "schemas" / "chat_message.avsc").read_text()


def python_producer(services):
    registry = SchemaRegistryClient({"url": services.registry, "timeout": 30})
    serializer = AvroSerializer(registry, SCHEMA, conf={"auto.register.schemas": True})
    producer = Producer({"bootstrap.servers": services.brokers, "acks": "all",
                         "enable.idempotence": True, "partitioner": "murmur2_random"})
    return serializer, producer


def produce(services, record):
    serializer, producer = python_producer(services)
    delivered = []
    value = serializer(record, SerializationContext(services.topic, MessageField.VALUE))
    producer.produce(services.topic, key=record["phone"].encode(), value=value,
                     on_delivery=lambda err, msg: delivered.append((err, msg)))
    producer.flush(30)
    (err, msg), = delivered
    assert err is None, err
    return msg.partition(), msg.offset()


def processed(services):
    return int(services.sql(
        f"SELECT coalesce(sum(next_offset), 0) FROM funnel_sink_offsets WHERE topic = '{services.topic}'"))


def test_python_avro_producer_message_becomes_a_row(services):
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    record = {
        "event_id": "py-" + uuid.uuid4().hex, "tenant": "default", "phone": "+6281299990001",
        "channel": "website", "direction": "inbound", "text": "Halo, minta pricelist dong",
        "sent_at": now, "received_at": now, "conversation_id": None, "campaign": "web-form",
        "source": "python", "metadata": {"utm_source": "google"},
    }
    produce(services, record)
    wait_until("the processor to store the Python message", lambda: processed(services) == 1)
    row = services.sql("SELECT phone, channel, campaign, message_count, lead_at = "
                       f"'{now.isoformat()}'::timestamptz FROM funnel_contacts")
    assert row == "+6281299990001|website|web-form|1|t"


def test_consumer_groups_tool_shows_the_processor_lag(services):
    now = dt.datetime.now(dt.timezone.utc)
    for i in range(7):
        res = services.http.post(services.url + "/v1/messages", json={
            "phone": f"+62812555{i:05d}", "channel": "ads", "text": "info harga", "sent_at": now.isoformat()},
            timeout=30)
        assert res.status_code == 202, res.text

    def describe():
        out = subprocess.run([str(LOCAL / "bin" / "kafka-consumer-groups"), "--bootstrap-server", services.brokers,
                              "--describe", "--group", services.name],
                             capture_output=True, text=True, timeout=120).stdout
        rows = [line.split() for line in out.splitlines() if line.startswith(services.name + " ")]
        # GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
        committed = [(int(r[3]), int(r[4]), int(r[5])) for r in rows if r[3].isdigit()]
        total = sum(c for c, _, _ in committed)
        return committed if total == 7 else None
    committed = wait_until("the processor's offsets to show in kafka-consumer-groups", describe, timeout=90,
                          interval=1)
    assert all(lag == 0 and current == end for current, end, lag in committed), committed
    assert processed(services) == 7


def test_http_and_python_put_a_phone_on_the_same_partition(services):
    phones = ["+6281234500001", "+6281234500002", "+6281234500003", "+6285712345678", "+6289876543210"]
    now = dt.datetime.now(dt.timezone.utc)
    for phone in phones:
        res = services.http.post(services.url + "/v1/messages", json={
            "phone": phone, "channel": "direct", "text": "halo", "sent_at": now.isoformat()}, timeout=30)
        assert res.status_code == 202, res.text
        http_partition = res.json()["partition"]
        py_partition, _ = produce(services, {
            "event_id": "py-" + uuid.uuid4().hex, "tenant": "default", "phone": phone, "channel": "direct",
            "direction": "inbound", "text": "halo", "sent_at": now, "received_at": now,
            "conversation_id": None, "campaign": None, "source": None, "metadata": {}})
        assert http_partition == py_partition, phone
    # Not all on one partition: the key really drives the partition.
    assert len({services.http.post(services.url + "/v1/messages", json={
        "phone": p, "channel": "direct", "text": "x", "sent_at": now.isoformat()}, timeout=30).json()["partition"]
        for p in phones}) > 1


def test_console_consumer_and_python_deserializer_read_what_ingest_produced(services):
    sent_at = "2026-11-20T10:15:00+07:00"
    res = services.http.post(services.url + "/v1/messages", json={
        "event_id": "http-1", "phone": "0812-7777-8888", "channel": "Campaign_Blast", "direction": "inbound",
        "text": "Saya tertarik promo akhir tahun", "sent_at": sent_at, "campaign": "akhir-tahun",
        "metadata": {"ad_id": "123"}}, timeout=30)
    assert res.status_code == 202, res.text
    partition, offset = res.json()["partition"], res.json()["offset"]

    # Kafka's own console consumer sees the key and the record.
    out = subprocess.run(
        [str(LOCAL / "bin" / "kafka-console-consumer"), "--bootstrap-server", services.brokers,
         "--topic", services.topic, "--partition", str(partition), "--offset", str(offset),
         "--max-messages", "1", "--timeout-ms", "30000",
         "--formatter-property", "print.key=true", "--formatter-property", "key.separator=|"],
        capture_output=True, timeout=90, check=True).stdout
    key, _, value = out.partition(b"|")
    assert key == b"+6281277778888"
    assert value.startswith(b"\x00"), "Confluent wire format: magic byte 0"
    assert b"Saya tertarik promo akhir tahun" in value

    # Python's AvroDeserializer decodes it through the registry.
    consumer = Consumer({"bootstrap.servers": services.brokers, "group.id": services.name + "-py",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    from confluent_kafka import TopicPartition
    consumer.assign([TopicPartition(services.topic, partition, offset)])
    msg = consumer.poll(30)
    consumer.close()
    assert msg is not None and msg.error() is None
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": services.registry, "timeout": 30}))
    record = deserializer(msg.value(), SerializationContext(services.topic, MessageField.VALUE))
    assert record["event_id"] == "http-1"
    assert record["phone"] == "+6281277778888"
    assert record["channel"] == "campaign_blast"
    assert record["tenant"] == "default"
    assert record["campaign"] == "akhir-tahun"
    assert record["metadata"] == {"ad_id": "123"}
    assert record["sent_at"] == dt.datetime(2026, 11, 20, 3, 15, tzinfo=dt.timezone.utc)
    assert record["received_at"] > record["sent_at"]
