"""Nothing accepted is lost while the broker fails: a load runs against funnel-ingest while
the broker is stopped (one node) or one of three nodes is killed; afterwards every event id
that got a 202 is in the topic, and every request got an answer in bounded time. A
funnel-processor runs through the same fault: it keeps going, and in the end the sink holds
exactly what the topic holds (one lead row per phone, one stage event per event id)."""

import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import requests
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from conftest import LOCAL, env, free_port, migrate, psql, stack_exports, wait_until

TOPIC = "funnel.chat-messages"

# Single node: short, so the test sees requests refused while the broker is down.
# Three nodes: longer than the brokers' session timeout (9 s), so a request waiting on a dead
# leader outlives the failover instead of being refused: a node failure costs no request.
SINGLE_NODE_TIMEOUT_MS = 5000
THREE_NODE_TIMEOUT_MS = 20000


class IsolatedStack:
    def __init__(self, tmp_path, port_base, nodes, produce_timeout_ms):
        self.produce_timeout_ms = produce_timeout_ms
        self.env = dict(os.environ, FUNNEL_STACK_DIR=str(tmp_path / "stack"), FUNNEL_PORT_BASE=str(port_base),
                        KAFKA_NODES=str(nodes))
        self.brokers = ",".join(f"127.0.0.1:{port_base + 90 + 2 * i}" for i in range(1, nodes + 1))
        self.registry = f"http://127.0.0.1:{port_base + 81}/apis/ccompat/v7"
        urls = stack_exports(self.env)
        self.database_url = urls["DATABASE_URL"]
        self.ingest_database_url = urls["FUNNEL_INGEST_DATABASE_URL"]
        self.processor_database_url = urls["FUNNEL_PROCESSOR_DATABASE_URL"]
        self.tmp = tmp_path
        self.ingest = None
        self.processor = None

    def stack(self, *args):
        subprocess.run([str(LOCAL / "stack.sh"), *args], env=self.env, check=True, stdout=subprocess.DEVNULL,
                       timeout=600)

    def start_ingest(self):
        bin_dir = Path(env("FUNNEL_BIN"))
        self.url = f"http://127.0.0.1:{free_port()}"
        migrate(self.database_url)
        ienv = dict(self.env, DATABASE_URL=self.ingest_database_url, FUNNEL_KAFKA_BROKERS=self.brokers,
                    FUNNEL_SCHEMA_REGISTRY_URL=self.registry, FUNNEL_HTTP_ADDR=self.url.removeprefix("http://"),
                    FUNNEL_PRODUCE_TIMEOUT_MS=str(self.produce_timeout_ms))
        self.token = subprocess.run([str(bin_dir / "funnel-ingest"), "token", "create", "--scope", "ingest"],
                                    env=ienv, check=True, capture_output=True, text=True).stdout.strip()
        self.ingest = subprocess.Popen([str(bin_dir / "funnel-ingest")], env=ienv,
                                       stdout=open(self.tmp / "ingest.log", "w"), stderr=subprocess.STDOUT)

        def live():
            assert self.ingest.poll() is None, (self.tmp / "ingest.log").read_text()[-3000:]
            try:
                return requests.get(self.url + "/health/live", timeout=1).ok
            except requests.RequestException:
                return False
        wait_until("funnel-ingest to answer", live)

    def start_processor(self):
        penv = dict(self.env, DATABASE_URL=self.processor_database_url, FUNNEL_KAFKA_BROKERS=self.brokers,
                    FUNNEL_SCHEMA_REGISTRY_URL=self.registry, FUNNEL_STATE_DIR=str(self.tmp / "state"),
                    FUNNEL_PROCESSOR_ADDR="", FUNNEL_BATCH_LINGER_MS="20")
        self.processor = subprocess.Popen([str(Path(env("FUNNEL_BIN")) / "funnel-processor")], env=penv,
                                          stdout=open(self.tmp / "processor.log", "w"), stderr=subprocess.STDOUT)

    def close(self):
        for p in (self.ingest, self.processor):
            if p:
                p.terminate()
                p.wait(30)
        subprocess.run([str(LOCAL / "stack.sh"), "down"], env=self.env, stdout=subprocess.DEVNULL, timeout=300)


def run_load(stack, seconds, fault):
    """Posts from several threads for `seconds`; runs `fault(elapsed)` from the main thread."""
    results, stop = [], threading.Event()

    def worker():
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {stack.token}"
        while not stop.is_set():
            event_id = "f-" + uuid.uuid4().hex
            body = {"event_id": event_id, "phone": f"+62812{uuid.uuid4().int % 10**7:07d}", "channel": "ads",
                    "text": "info promo", "sent_at": "2026-11-20T10:00:00Z"}
            started = time.monotonic()
            try:
                res = s.post(stack.url + "/v1/messages", json=body, timeout=60)
                status = res.status_code
                # A refusal tells the client when to come back.
                if status == 503 and not res.headers.get("Retry-After", "").isdigit():
                    status = -503
            except requests.RequestException:
                status = 0
            results.append((event_id, status, time.monotonic() - started))
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    started = time.monotonic()
    fault_done = False
    while time.monotonic() - started < seconds:
        if not fault_done:
            fault_done = fault(time.monotonic() - started)
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(90)
    return results


def event_ids_in_topic(stack):
    """event id -> phone of every record in the topic."""
    consumer = Consumer({"bootstrap.servers": stack.brokers, "group.id": "fault-check",
                         "enable.auto.commit": False})
    deser = AvroDeserializer(SchemaRegistryClient({"url": stack.registry, "timeout": 30}))
    ends = {p: consumer.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=30)[1] for p in range(12)}
    consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(12)])
    ids, pos = {}, {p: 0 for p in range(12)}

    def done():
        for m in consumer.consume(2000, 1.0):
            assert m.error() is None, m.error()
            record = deser(m.value(), SerializationContext(TOPIC, MessageField.VALUE))
            ids[record["event_id"]] = record["phone"]
            pos[m.partition()] = m.offset() + 1
        return all(pos[p] >= ends[p] for p in ends)
    wait_until("reading the topic to its end", done, timeout=180, interval=0)
    consumer.close()
    stack.topic_end = sum(ends.values())
    return ids


def check_sink(stack, ids_in_topic):
    """The processor ran through the fault: it commits up to the end of the topic and the sink
    holds exactly what the topic holds."""
    def sql(q):
        return int(psql(stack.database_url, q))
    wait_until("the processor to commit the whole topic", lambda: sql(
        "SELECT COALESCE(sum(next_offset), 0) FROM funnel_sink_offsets") == stack.topic_end, timeout=180)
    assert stack.processor.poll() is None, (stack.tmp / "processor.log").read_text()[-3000:]
    phones = set(ids_in_topic.values())
    assert sql("SELECT count(*) FROM funnel_contacts") == len(phones)
    assert sql("SELECT count(*) FROM funnel_contacts WHERE lead_at IS NOT NULL") == len(phones)
    assert sql("SELECT sum(message_count) FROM funnel_contacts") == len(ids_in_topic)
    assert sql("SELECT count(*) FROM funnel_stage_events") == len(ids_in_topic)
    return len(phones)


def check(stack, results, ids_in_topic, expect_no_failures):
    accepted = [e for e, status, _ in results if status == 202]
    statuses = {s for _, s, _ in results}
    assert accepted, "the load got no 202 at all"
    assert statuses <= {202, 503}, statuses
    missing = [e for e in accepted if e not in ids_in_topic]
    assert not missing, f"{len(missing)} of {len(accepted)} accepted messages are missing: {missing[:5]}"
    slowest = max(elapsed for _, _, elapsed in results)
    # Bounded: no request waits much longer than the produce timeout.
    assert slowest < stack.produce_timeout_ms / 1000 + 5, slowest
    if expect_no_failures:
        assert 503 not in statuses, sum(1 for _, s, _ in results if s == 503)
    return len(accepted), sum(1 for _, s, _ in results if s == 503)


def test_broker_stopped_during_load_loses_no_accepted_message(tmp_path):
    stack = IsolatedStack(tmp_path, 28000, 1, SINGLE_NODE_TIMEOUT_MS)
    try:
        stack.stack("up")
        stack.start_ingest()
        stack.start_processor()
        state = {}

        def fault(elapsed):
            if elapsed > 4 and "stopped" not in state:
                subprocess.run([str(LOCAL / "stack.sh"), "kill-kafka-node", "1"], env=stack.env, check=True)
                state["stopped"] = elapsed
            if "stopped" in state and elapsed > state["stopped"] + 8:
                subprocess.Popen([str(LOCAL / "stack.sh"), "start-kafka-node", "1"], env=stack.env,
                                 stdout=subprocess.DEVNULL)
                return True
            return False
        results = run_load(stack, 30, fault)
        in_topic = event_ids_in_topic(stack)
        accepted, unavailable = check(stack, results, in_topic, expect_no_failures=False)
        assert unavailable > 0, "the broker was down for 8 s: some requests must have been refused"
        contacts = check_sink(stack, in_topic)
        print(f"single broker stopped: {accepted} accepted, {unavailable} answered 503; "
              f"the processor ran through it: {contacts} rows, {len(in_topic)} stage events, exact")
    finally:
        stack.close()


def test_one_of_three_nodes_killed_during_load_costs_no_accepted_message(tmp_path):
    stack = IsolatedStack(tmp_path, 29000, 3, THREE_NODE_TIMEOUT_MS)
    try:
        stack.stack("up")
        stack.start_ingest()
        stack.start_processor()

        def fault(elapsed):
            if elapsed > 4:
                subprocess.run([str(LOCAL / "stack.sh"), "kill-kafka-node", "2"], env=stack.env, check=True)
                return True
            return False
        results = run_load(stack, 20, fault)
        in_topic = event_ids_in_topic(stack)
        accepted, unavailable = check(stack, results, in_topic, expect_no_failures=True)
        contacts = check_sink(stack, in_topic)
        print(f"one of three nodes killed: {accepted} accepted, {unavailable} answered 503; "
              f"the processor ran through it: {contacts} rows, {len(in_topic)} stage events, exact")
    finally:
        stack.close()
