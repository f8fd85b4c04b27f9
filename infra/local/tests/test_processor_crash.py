"""Crash tests of the exactly-once sink: funnel-processor dies at its failpoints (mid-batch with
dead letters produced; after the PostgreSQL commit before the RocksDB write; after the RocksDB
write before the Kafka commit) and by kill -9 at random moments. After each, a restart; at the
end `funnel-loadtest verify` must find the tables equal to the generator's ground truth, and
every poison record must be in the dead-letter topic."""

import json
import os
import random
import signal
import time

from confluent_kafka import Consumer, Producer, TopicPartition

from conftest import Processors, loadtest, progress, wait_until

# kill -9 at random moments: 50 in `make test`, 200 in `make test-faults-long`.
KILLS = int(os.environ.get("FUNNEL_CRASH_KILLS", "50"))


def end_offsets(services, topic):
    c = Consumer({"bootstrap.servers": services.brokers, "group.id": services.name + "-probe"})
    try:
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                   for p in range(services.partitions))
    finally:
        c.close()


def dead_letters(services):
    """(source partition, source offset) of every record in the dead-letter topic."""
    c = Consumer({"bootstrap.servers": services.brokers, "group.id": services.name + "-dlq-probe",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition(services.dlq, p, 0) for p in range(services.partitions)])
    out, idle = [], 0
    while idle < 5:
        m = c.poll(1.0)
        if m is None:
            idle += 1
            continue
        idle = 0
        h = dict(m.headers() or [])
        out.append((int(h["funnel.source.partition"]), int(h["funnel.source.offset"])))
    c.close()
    return out


def test_kill_9_at_failpoints_and_random_moments_keeps_the_funnel_exact(ingest_only, tmp_path):
    services = ingest_only
    ds = tmp_path / "ds"
    loadtest(services, "generate", "--seed", "31", "--contacts", str(max(300, 60 * KILLS)), "--out", str(ds))
    sent = json.loads(loadtest(services, "send", "--dataset", str(ds), "--mode", "kafka", "--json").stdout)
    assert sent["failed"] == 0 and sent["unexpected"] == 0, sent
    # Poison among the good records: not Avro, and a valid frame with an unknown schema id.
    producer = Producer({"bootstrap.servers": services.brokers, "partitioner": "murmur2_random"})
    poison = [(f"+62812000000{i:02d}", b"\x00\x7f\xff\xff\xf0garbage" if i % 2 else b"not avro")
              for i in range(6)]
    for key, value in poison:
        producer.produce(services.topic, key=key, value=value)
    assert producer.flush(30) == 0
    total = end_offsets(services, services.topic)
    assert total > 1000, total

    # One instance at a time, one state folder: batches of 40 so a crash lands mid-stream.
    # Static membership: a restarted instance takes its partitions back at once instead of
    # waiting out the killed one's session.
    procs = Processors(services, tmp_path, FUNNEL_BATCH_MAX="40", FUNNEL_BATCH_LINGER_MS="5",
                       FUNNEL_STATE_DIR=str(tmp_path / "state"), FUNNEL_INSTANCE_ID="crash-test")
    try:
        # Each failpoint lets a few batches commit, then aborts the process (SIGABRT: no
        # destructor, no flush, like kill -9) in the middle of the next one.
        for failpoint in ["before-pg-commit=3*off->return", "after-pg-commit=2*off->return",
                          "after-state-write=4*off->return", "after-pg-commit=1*off->return"]:
            before = progress(services)
            p = procs.start(failpoint)
            rc = p.wait(180)
            assert rc == -signal.SIGABRT, f"{failpoint}: exit {rc}\n{procs.logs()}"
            after = progress(services)
            assert before < after < total, (failpoint, before, after, total)
            print(f"crashed at {failpoint}: committed {before} -> {after} of {total}")

        # kill -9 at random moments while batches commit (each held 200 ms before its commit,
        # so the kill lands mid-stream rather than after the end).
        rng = random.Random(20261124)
        for _ in range(KILLS):
            before = progress(services)
            p = procs.start("before-pg-commit=sleep(200)")
            wait_until("a commit after the restart", lambda: progress(services) > before, timeout=120)
            time.sleep(rng.uniform(0.0, 0.6))
            p.send_signal(signal.SIGKILL)
            p.wait(30)
            killed_at = progress(services)
            assert killed_at < total, "killed mid-stream"
            print(f"kill -9 at committed {killed_at} of {total}")
        print(f"{4 + KILLS} crashes in all")

        procs.start()
        out = loadtest(services, "verify", "--dataset", str(ds), "--wait", "180", check=False)
        print(out.stdout.strip().splitlines()[-1])
        assert out.returncode == 0 and out.stdout.strip().endswith("-> EQUAL"), \
            out.stdout[-4000:] + out.stderr[-2000:] + procs.logs()
        wait_until("every record to be committed", lambda: progress(services) == total, timeout=60)
        # Every poison record was dead-lettered (a crash between the dead-letter produce and the
        # commit may have produced one twice: the dead-letter topic is at-least-once).
        dead = dead_letters(services)
        assert len(set(dead)) == len(poison), dead
        # Stage events are exactly once: as many as the ground truth's stage totals.
        expected_events = sum(t["events"] for t in json.loads((ds / "expected-stages.json").read_text()))
        assert int(services.sql("SELECT count(*) FROM funnel_stage_events")) == expected_events
    finally:
        procs.stop_all()
