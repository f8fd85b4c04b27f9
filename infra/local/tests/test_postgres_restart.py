"""PostgreSQL going away is a transient error: funnel-processor retries with backoff, dead-letters
nothing, stays up, and once PostgreSQL is back the tables equal the generator's ground truth.
The database is a private PostgreSQL (its own port and data folder) so stopping it disturbs no
other test; Kafka and the registry are the shared local stack's."""

import json
import os
import subprocess
import uuid
from pathlib import Path

import requests
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import LOCAL, env, free_port, migrate, stack_exports, wait_until

PORT_BASE = 27500


def metric(url, name):
    for line in requests.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def test_processor_retries_through_a_postgres_restart(tmp_path):
    stack_env = dict(os.environ, FUNNEL_STACK_DIR=str(tmp_path / "stack"), FUNNEL_PORT_BASE=str(PORT_BASE),
                     FUNNEL_STACK_COMPONENTS="postgres")

    def stack(*args):
        subprocess.run([str(LOCAL / "stack.sh"), *args], env=stack_env, check=True, stdout=subprocess.DEVNULL,
                       timeout=300)

    try:
        stack("up")
        run_through_restart(tmp_path, stack, stack_exports(stack_env))
    finally:
        subprocess.run([str(LOCAL / "stack.sh"), "down"], env=stack_env, stdout=subprocess.DEVNULL, timeout=300)


def run_through_restart(tmp_path, stack, urls):
    name = "pgr_" + uuid.uuid4().hex[:10]
    brokers = env("FUNNEL_KAFKA_BROKERS")
    topic, dlq = f"{name}.chat-messages", f"{name}.dlq"
    admin = AdminClient({"bootstrap.servers": brokers})
    for f in admin.create_topics([NewTopic(t, 4, 1) for t in (topic, dlq)]).values():
        f.result(30)
    processor_url = f"http://127.0.0.1:{free_port()}"
    migrate(urls["DATABASE_URL"])
    penv = dict(os.environ, DATABASE_URL=urls["FUNNEL_PROCESSOR_DATABASE_URL"],
                FUNNEL_TOPIC_MESSAGES=topic, FUNNEL_TOPIC_DLQ=dlq, FUNNEL_CONSUMER_GROUP=name,
                FUNNEL_STATE_DIR=str(tmp_path / "state"), FUNNEL_BATCH_MAX="25", FUNNEL_BATCH_LINGER_MS="5",
                FUNNEL_PROCESSOR_ADDR=processor_url.removeprefix("http://"))
    bin_dir = Path(env("FUNNEL_BIN"))

    def run(*args):
        return subprocess.run([str(bin_dir / args[0]), *args[1:]], env=penv, capture_output=True, text=True)

    ds = tmp_path / "ds"
    assert run("funnel-loadtest", "generate", "--seed", "77", "--contacts", "250", "--out", str(ds)).returncode == 0

    log = tmp_path / "processor.log"
    processor = subprocess.Popen([str(bin_dir / "funnel-processor")], env=penv, stdout=open(log, "w"),
                                 stderr=subprocess.STDOUT)
    try:
        def ready():
            assert processor.poll() is None, log.read_text()[-3000:]
            try:
                return requests.get(processor_url + "/health/ready", timeout=2).status_code == 200
            except requests.RequestException:
                return False
        wait_until("the processor to be ready", ready)
        stack("down")
        # The traffic arrives while PostgreSQL is gone: batches fail and are retried; the
        # process stays up.
        sent = run("funnel-loadtest", "send", "--dataset", str(ds), "--mode", "kafka", "--json")
        assert sent.returncode == 0, sent.stderr
        assert json.loads(sent.stdout)["failed"] == 0
        wait_until("a transient retry", lambda: (metric(
            processor_url, 'funnel_processor_batch_retries_total{reason="transient"}') or 0) > 0, timeout=60)
        assert processor.poll() is None, log.read_text()[-3000:]
        stack("up")
        out = run("funnel-loadtest", "verify", "--dataset", str(ds), "--wait", "180")
        assert out.returncode == 0 and out.stdout.strip().endswith("-> EQUAL"), \
            out.stdout[-3000:] + log.read_text()[-3000:]
        assert processor.poll() is None, "the processor survived the outage"
        assert metric(processor_url, "funnel_processor_dead_letters_total") == 0
        c = Consumer({"bootstrap.servers": brokers, "group.id": name + "-probe"})
        assert sum(c.get_watermark_offsets(TopicPartition(dlq, p), timeout=10)[1] for p in range(4)) == 0, \
            "nothing was dead-lettered"
        c.close()
    finally:
        processor.terminate()
        processor.wait(30)
