"""The local stack itself: data survives `make stack-down && make stack-up`, and the
three-node cluster keeps every acknowledged message while a node is killed. Each test runs an
isolated stack (own data folder and ports) beside the one the other tests use."""

import os
import subprocess

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from conftest import LOCAL, ROOT, wait_until


def stack_env(tmp_path, port_base, **extra):
    return dict(os.environ, FUNNEL_STACK_DIR=str(tmp_path / "stack"), FUNNEL_PORT_BASE=str(port_base), **extra)


def make(target, env):
    subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), target], env=env, check=True,
                   stdout=subprocess.DEVNULL, timeout=600)


def consume_all(brokers, topic, partitions, timeout=60):
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "stack-test",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(partitions)}
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen, positions = [], {p: 0 for p in range(partitions)}

    def caught_up():
        for msg in consumer.consume(1000, 1.0):
            assert msg.error() is None, msg.error()
            seen.append(msg.value())
            positions[msg.partition()] = msg.offset() + 1
        return all(positions[p] >= ends[p] for p in ends)
    wait_until(f"reading {topic} to its end", caught_up, timeout=timeout, interval=0)
    consumer.close()
    return seen


def test_stack_down_and_up_keeps_topics_messages_and_schemas(tmp_path):
    env = stack_env(tmp_path, 27000)
    brokers, registry_url = "127.0.0.1:27092", "http://127.0.0.1:27081/apis/ccompat/v7"
    try:
        make("stack-up", env)
        registry = SchemaRegistryClient({"url": registry_url, "timeout": 30})
        schema_id = registry.register_schema("funnel.chat-messages-value",
                                             Schema((ROOT / "schemas" / "chat_message.avsc").read_text(), "AVRO"))
        producer = Producer({"bootstrap.servers": brokers, "acks": "all", "enable.idempotence": True})
        for i in range(50):
            producer.produce("funnel.chat-messages", key=f"+62812{i:07d}".encode(), value=f"m{i}".encode())
        assert producer.flush(30) == 0

        make("stack-down", env)
        make("stack-up", env)

        topics = AdminClient({"bootstrap.servers": brokers}).list_topics(timeout=30).topics
        assert {"funnel.chat-messages", "funnel.dlq"} <= set(topics)
        assert len(topics["funnel.chat-messages"].partitions) == 12
        values = consume_all(brokers, "funnel.chat-messages", 12)
        assert sorted(values) == sorted(f"m{i}".encode() for i in range(50))
        registry = SchemaRegistryClient({"url": registry_url, "timeout": 30})
        latest = registry.get_latest_version("funnel.chat-messages-value")
        assert latest.schema_id == schema_id
        assert registry.get_compatibility() == "BACKWARD"
    finally:
        make("stack-down", env)


def test_three_node_cluster_keeps_every_acknowledged_message_when_a_node_dies(tmp_path):
    env = stack_env(tmp_path, 26000, KAFKA_NODES="3", FUNNEL_STACK_COMPONENTS="kafka")
    brokers = "127.0.0.1:26092,127.0.0.1:26094,127.0.0.1:26096"
    try:
        subprocess.run([str(LOCAL / "stack.sh"), "up"], env=env, check=True, stdout=subprocess.DEVNULL, timeout=600)
        quorum = subprocess.run([str(LOCAL / "bin" / "kafka-metadata-quorum"), "--bootstrap-server", brokers,
                                 "describe", "--status"], env=env, capture_output=True, text=True,
                                check=True, timeout=120).stdout
        voters = next(line for line in quorum.splitlines() if line.startswith("CurrentVoters"))
        assert voters.count('"id"') == 3, quorum
        topic = AdminClient({"bootstrap.servers": brokers}).list_topics(timeout=30).topics["funnel.chat-messages"]
        assert all(len(p.replicas) == 3 for p in topic.partitions.values())

        producer = Producer({"bootstrap.servers": brokers, "acks": "all", "enable.idempotence": True,
                             "partitioner": "murmur2_random", "linger.ms": 5,
                             "delivery.timeout.ms": 120000})
        acked, failed = set(), []

        def on_delivery(err, msg):
            if err is None:
                acked.add(msg.value())
            else:
                failed.append(err)
        total = 60000
        for i in range(total):
            if i == total // 3:
                producer.flush(60)
                # Kill the node leading partition 0 (or any) with SIGKILL in the middle of the load.
                subprocess.run([str(LOCAL / "stack.sh"), "kill-kafka-node", "1"], env=env, check=True)
            while True:
                try:
                    producer.produce("funnel.chat-messages", key=f"+62812{i % 5000:07d}".encode(),
                                     value=str(i).encode(), on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        assert producer.flush(180) == 0
        subprocess.run([str(LOCAL / "stack.sh"), "start-kafka-node", "1"], env=env, check=True,
                       stdout=subprocess.DEVNULL, timeout=300)

        assert len(acked) > 0
        stored = set(consume_all(brokers, "funnel.chat-messages", 12, timeout=120))
        missing = acked - stored
        assert not missing, f"{len(missing)} acknowledged messages are missing, e.g. {sorted(missing)[:5]}"
        # With two of three nodes up and min.insync.replicas=2, nothing had to fail.
        assert not failed, failed[:5]
        assert len(acked) == total
    finally:
        subprocess.run([str(LOCAL / "stack.sh"), "down"], env=env, stdout=subprocess.DEVNULL, timeout=300)
