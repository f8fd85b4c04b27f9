"""Replay after a rule change (docs/replay.md), end to end, against an oracle computed here.

Messages are written for known keywords. Their stages under each rule set below are therefore
known by construction. The oracle folds the sent messages with the contract's fold, each under
the rule set that must classify it. It never reads the funnel tables and never runs the
classifier.

- Rule set A is the migration's default set.
- B drops `harga` as a lead, and adds `katalog` (lead) and `fix ambil` (booking).
- C drops `info` as a lead, and brings `harga` back.

The services run on a topic and database of their own, with the real ingest, Kafka, registry,
processor and PostgreSQL."""

import json
import random
import signal
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from conftest import LOCAL, Processors, Services, env, wait_until

UTC = timezone.utc

TEXTS = {
    "info": ["info dong kak", "boleh minta info?", "Info paketnya kak"],
    "harga": ["harga berapa kak?", "kak, harga paket yang itu?"],
    "katalog": ["minta katalog dong", "ada katalog terbaru kak?"],
    "booking": ["mau booking ya kak", "booking untuk sabtu"],
    "fixambil": ["oke fix ambil yang itu", "fix ambil kak"],
    "trx": ["sudah transfer Rp {v}", "kak sudah transfer Rp {v} ya"],
    "filler": ["halo", "terima kasih", "ok kak", "siap"],
}
STAGES = {
    "A": {"info": {"lead"}, "harga": {"lead"}, "katalog": set(), "booking": {"booking"}, "fixambil": set(),
          "trx": {"transaction"}, "filler": set()},
    "B": {"info": {"lead"}, "harga": set(), "katalog": {"lead"}, "booking": {"booking"}, "fixambil": {"booking"},
          "trx": {"transaction"}, "filler": set()},
    "C": {"info": set(), "harga": {"lead"}, "katalog": {"lead"}, "booking": {"booking"}, "fixambil": {"booking"},
          "trx": {"transaction"}, "filler": set()},
}
KW_WEIGHTS = {"info": 4, "harga": 4, "katalog": 4, "booking": 3, "fixambil": 2, "trx": 3, "filler": 6}
CHANNELS = ["ads", "website", "direct", "campaign_blast"]
START = datetime(2026, 11, 1, tzinfo=UTC)


def rules(which):
    """The rule list of set B or C, for PUT /v1/rules."""
    trx = [{"id": "trx-transfer", "stage": "transaction", "match": "word", "pattern": "sudah transfer",
            "direction": "inbound", "priority": 100}]
    booking = [{"id": "book-booking", "stage": "booking", "match": "word", "pattern": "booking", "priority": 100},
               {"id": "book-fix-ambil", "stage": "booking", "match": "word", "pattern": "fix ambil", "priority": 100}]
    leads = {"B": ["info", "katalog"], "C": ["harga", "katalog"]}[which]
    return [{"id": f"lead-{w}", "stage": "lead", "match": "word", "pattern": w, "direction": "inbound",
             "priority": 100} for w in leads] + booking + trx


class Traffic:
    """Generated messages with known keywords; each remembers which rule set must classify it."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.sent = []  # (payload, kw, value, rule set letter), duplicates included
        self.phones = [f"+62813{seed % 100:02d}{i:06d}" for i in range(400)]
        self.n = 0

    def message(self, phone=None):
        rng = self.rng
        kw = rng.choices(list(KW_WEIGHTS), list(KW_WEIGHTS.values()))[0]
        value = Decimal(rng.randrange(50, 900) * 1000) if kw == "trx" else Decimal(0)
        text = rng.choice(TEXTS[kw]).format(v=f"{int(value):,}".replace(",", "."))
        self.n += 1
        payload = {"event_id": f"rp-{self.n:06d}", "phone": phone or rng.choice(self.phones),
                   "channel": rng.choice(CHANNELS), "direction": "inbound", "text": text,
                   "sent_at": (START + timedelta(seconds=self.n * 37)).strftime("%Y-%m-%dT%H:%M:%SZ")}
        if kw in ("info", "harga", "katalog") and rng.random() < 0.5:
            payload["campaign"] = rng.choice(["nov-ads", "flash", "retarget"])
        return payload, kw, value

    def batch(self, n, letter):
        out = []
        for _ in range(n):
            p, kw, v = self.message()
            out.append((p, kw, v, letter))
            if self.rng.random() < 0.05:  # a client retry: same event id, same content
                out.append((dict(p), kw, v, letter))
        return out


def send(services, items):
    for i in range(0, len(items), 500):
        chunk = items[i:i + 500]
        res = services.http.post(services.url + "/v1/messages/batch",
                                 json={"messages": [p for p, *_ in chunk]}, timeout=120)
        assert res.status_code == 202, res.text[:1000]
        assert all(r.get("status") == "accepted" for r in res.json()["results"]), res.text[:1000]


def fold(sent, classify):
    """Contacts as the contract's fold defines them. `classify(item)` names the rule set letter of
    a sent message (the first copy of an event id decides)."""
    seen = set()
    contacts = {}
    events = set()
    for item in sent:
        p, kw, value, _ = item
        if p["event_id"] in seen:
            continue
        seen.add(p["event_id"])
        stages = STAGES[classify(item)][kw]
        t = datetime.fromisoformat(p["sent_at"].replace("Z", "+00:00"))
        c = contacts.setdefault(p["phone"], {"lead": None, "booking_at": None, "transaction_at": None, "tx": {},
                                             "first": t, "last": t, "count": 0})
        c["count"] += 1
        c["first"], c["last"] = min(c["first"], t), max(c["last"], t)
        for s in stages:
            events.add((p["event_id"], s))
        if "lead" in stages and (c["lead"] is None or (t, p["event_id"]) < c["lead"][0]):
            c["lead"] = ((t, p["event_id"]), p["channel"], p.get("campaign"))
        if "booking" in stages:
            c["booking_at"] = min(filter(None, [c["booking_at"], t]))
        if "transaction" in stages:
            c["transaction_at"] = min(filter(None, [c["transaction_at"], t]))
            c["tx"][p["event_id"]] = value
    rows = {}
    for phone, c in contacts.items():
        lead = c["lead"]
        rows[phone] = (lead[0][0] if lead else None, lead[1] if lead else None, lead[2] if lead else None,
                       c["booking_at"], c["transaction_at"], sum(c["tx"].values(), Decimal(0)), len(c["tx"]),
                       c["first"], c["last"], c["count"])
    return rows, events


def ts(s):
    return datetime.fromisoformat(s.replace(" ", "T")) if s else None


def table(services):
    out = services.sql(
        "SELECT phone, lead_at, channel, campaign, booking_at, transaction_at, transaction_value, transaction_count, "
        "first_message_at, last_message_at, message_count FROM funnel_contacts")
    rows = {}
    for line in out.splitlines():
        f = line.split("|")
        rows[f[0]] = (ts(f[1]), f[2] or None, f[3] or None, ts(f[4]), ts(f[5]), Decimal(f[6]), int(f[7]),
                      ts(f[8]), ts(f[9]), int(f[10]))
    return rows


def assert_equal(services, expected, events, what):
    got = table(services)
    diffs = [(k, expected.get(k), got.get(k)) for k in set(expected) | set(got) if expected.get(k) != got.get(k)]
    assert not diffs, f"{what}: {len(diffs)} contacts differ from the oracle, e.g. {diffs[:3]}"
    n = int(services.sql("SELECT count(*) FROM funnel_stage_events"))
    assert n == len(events), f"{what}: {n} stage events, the oracle has {len(events)}"


def sink_caught_up(services):
    """Whether the live generation's sink has applied everything in the topic."""
    c = Consumer({"bootstrap.servers": services.brokers, "group.id": services.name + "-ends"})
    try:
        ends = {p: c.get_watermark_offsets(TopicPartition(services.topic, p), timeout=30)[1]
                for p in range(services.partitions)}
    finally:
        c.close()
    rows = services.sql("SELECT partition, next_offset FROM funnel_sink_offsets")
    done = {int(p): int(o) for p, o in (line.split("|") for line in rows.splitlines() if line)}
    return all(done.get(p, 0) >= e for p, e in ends.items() if e > 0)


def admin_token(services):
    return subprocess.run([str(Path(env("FUNNEL_BIN")) / "funnel-ingest"), "token", "create", "--scope", "admin"],
                          env=services.ingest_env, check=True, capture_output=True, text=True).stdout.strip()


def put_rules(services, which):
    """Stores rule set `which` and gives the running processors time to pick it up (they look for a
    new one every FUNNEL_RULES_POLL_MS, 2 s). Returns its version."""
    res = services.http.put(services.url + "/v1/rules", json=rules(which), timeout=30,
                            headers={"Authorization": f"Bearer {admin_token(services)}"})
    assert res.status_code == 201, res.text
    time.sleep(3)
    return res.json()["version"]


def send_around_a_point(services, before, after, timeout=180):
    """Sends `before` and lets the sink apply it, takes a point in time 1.5 s clear of both sides,
    then sends `after` and lets the sink apply it. Returns the point."""
    send(services, before)
    wait_until("the sink to apply the messages before the point", lambda: sink_caught_up(services),
               timeout=timeout)
    time.sleep(1.5)
    point = datetime.now(UTC)
    time.sleep(1.5)
    send(services, after)
    wait_until("the sink to apply the messages after the point", lambda: sink_caught_up(services),
               timeout=timeout)
    return point


def processor(services, *args, timeout=300, check=True):
    out = subprocess.run([str(Path(env("FUNNEL_BIN")) / "funnel-processor"), *args], env=services.env,
                         capture_output=True, text=True, timeout=timeout)
    if check:
        # The error comes first; a backtrace (RUST_BACKTRACE) may follow it.
        assert out.returncode == 0, f"funnel-processor {' '.join(args)} failed:\n{out.stdout}\n{out.stderr[:3000]}"
    return out


class Reader(threading.Thread):
    """Reads the contact count over and over, as an analyst refreshing a dashboard would."""

    def __init__(self, services):
        super().__init__(daemon=True)
        self.services, self.counts, self.stop = services, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.counts.append(int(self.services.sql("SELECT count(*) FROM funnel_contacts")))
            time.sleep(0.02)


def poison(services, n):
    """Records no decoder reads: they must reach the dead-letter topic once, not once per generation."""
    p = Producer({"bootstrap.servers": services.brokers})
    for i in range(n):
        p.produce(services.topic, key=f"+6281300000{i:03d}".encode(), value=b"not avro at all")
    p.flush(30)


def dead_letters(services):
    c = Consumer({"bootstrap.servers": services.brokers, "group.id": services.name + "-dlq-count"})
    try:
        return sum(c.get_watermark_offsets(TopicPartition(services.dlq, p), timeout=30)[1] for p in range(12))
    finally:
        c.close()


def generations(services):
    return [tuple(line.split("|")) for line in
            services.sql("SELECT generation, state FROM funnel_generations ORDER BY generation").splitlines()]


def test_replay_from_earliest_then_from_a_time(tmp_path):
    s = Services(tmp_path)
    try:
        traffic = Traffic(1)
        phase1 = traffic.batch(1500, "A")
        send(s, phase1)
        poison(s, 2)
        wait_until("the sink to apply phase 1", lambda: sink_caught_up(s), timeout=120)
        expected, events = fold(phase1, lambda i: "A")
        assert_equal(s, expected, events, "before any replay")
        assert dead_letters(s) == 2

        version_b = put_rules(s, "B")

        # The dry run: what B changes among the records it would classify again.
        dry = processor(s, "replay", "--from", "earliest", "--dry-run")
        changed_kw = {"harga", "katalog", "fixambil"}
        changed_records = sum(1 for _, kw, _, _ in phase1 if kw in changed_kw)
        changed_contacts = len({p["phone"] for p, kw, _, _ in phase1 if kw in changed_kw})
        assert (f"{changed_records} of the {len(phase1) + 2} records from the boundaries on would be classified "
                f"differently") in dry.stdout, dry.stdout
        assert (f"{changed_contacts} of the {len({p['phone'] for p, *_ in phase1})} contacts with records there "
                f"would change") in dry.stdout, dry.stdout
        assert generations(s) == [("1", "live")], "a dry run creates nothing"

        # The replay from earliest, while traffic goes on and a reader watches the count.
        reader = Reader(s)
        reader.start()
        during = []
        stop_traffic = threading.Event()

        def keep_sending():
            while not stop_traffic.is_set():
                items = traffic.batch(40, "B")
                send(s, items)
                during.extend(items)
                time.sleep(0.2)
        sender = threading.Thread(target=keep_sending, daemon=True)
        sender.start()
        started = time.monotonic()
        out = processor(s, "replay", "--from", "earliest")
        took = time.monotonic() - started
        stop_traffic.set()
        sender.join(60)
        assert "switched: generation 2 is live" in out.stdout, out.stdout
        wait_until("the sink to apply the traffic sent during the replay", lambda: sink_caught_up(s), timeout=120)
        time.sleep(1)
        reader.stop.set()
        reader.join(30)
        counts = reader.counts
        assert len(counts) > 20, "the reader read while the replay ran"
        backwards = [(a, b) for a, b in zip(counts, counts[1:]) if b < a]
        assert not backwards, f"the contact count went back: {backwards[:5]}"
        assert during, "traffic was sent during the replay"
        expected, events = fold(phase1 + during, lambda i: "B")
        assert_equal(s, expected, events, "after the replay from earliest")
        assert generations(s) == [("1", "retired"), ("2", "live")]
        for what in ("SELECT indexname FROM pg_indexes WHERE schemaname = '{}' ORDER BY 1",
                     "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n "
                     "ON n.oid = c.relnamespace WHERE n.nspname = '{}' AND NOT t.tgisinternal ORDER BY 1"):
            assert s.sql(what.format("funnel_gen_2")) == s.sql(what.format("funnel_gen_1")) != "", \
                "the new generation has the live one's indexes and triggers"
        assert int(s.sql(f"SELECT count(*) FROM funnel_stage_events WHERE rule_set_version <> {version_b}")) == 0
        assert dead_letters(s) == 2, "the replay did not dead-letter the poison records again"
        daily = s.sql("SELECT sum(leads), sum(bookings), sum(transactions) FROM funnel_daily")
        leads = sum(1 for r in expected.values() if r[0])
        bookings = sum(1 for r in expected.values() if r[3])
        paid = sum(1 for r in expected.values() if r[4])
        assert daily == f"{leads}|{bookings}|{paid}", (daily, leads, bookings, paid)
        print(f"\nreplay from earliest of {len(phase1) + len(during)} messages: {took:.1f} s; "
              f"reader saw {len(counts)} counts")

        # The switch left the old generation for comparison: the diff compares it with the live one.
        diff = json.loads(processor(s, "replay", "diff", "--json").stdout)
        assert (diff["live_generation"], diff["new_generation"]) == (1, 2)

        # Phase 2 under B; then the point in time; phase 3; then rule set C, replayed from the point.
        phase2, phase3 = traffic.batch(300, "B"), traffic.batch(300, "B")
        point = send_around_a_point(s, phase2, phase3)
        put_rules(s, "C")
        out = processor(s, "replay", "--from", point.isoformat())
        assert "switched: generation 3 is live" in out.stdout, out.stdout
        after = {id(i) for i in phase3}
        expected, events = fold(phase1 + during + phase2 + phase3, lambda i: "C" if id(i) in after else "B")
        assert_equal(s, expected, events, "after the replay from a point in time")
        assert generations(s) == [("1", "dropped"), ("2", "retired"), ("3", "live")]
        assert s.sql("SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'funnel_gen_1'") == "0"
    finally:
        s.stop()


def test_review_diff_abandon_and_refusals(tmp_path):
    s = Services(tmp_path)
    try:
        traffic = Traffic(2)
        sent = traffic.batch(800, "A")
        send(s, sent)
        wait_until("the sink to apply the traffic", lambda: sink_caught_up(s), timeout=120)
        put_rules(s, "B")

        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        out = processor(s, "replay", "--from", future, check=False)
        assert out.returncode != 0 and "in the future" in out.stderr, out.stderr[-2000:]
        out = processor(s, "replay", "--from", "kafka", check=False)
        assert out.returncode != 0 and "nothing was reset" in out.stderr, out.stderr[-2000:]
        out = processor(s, "replay", "--from", "yesterday", check=False)
        assert out.returncode != 0 and "RFC 3339" in out.stderr, out.stderr[-2000:]

        out = processor(s, "replay", "--from", "earliest", "--review")
        assert "waits for review" in out.stdout, out.stdout
        assert generations(s) == [("1", "live"), ("2", "building")]
        before, _ = fold(sent, lambda i: "A")
        after, _ = fold(sent, lambda i: "B")
        assert table(s) == before, "under review, the views still show the live generation"

        out = processor(s, "replay", "--from", "earliest", check=False)
        assert out.returncode != 0 and "already under way" in out.stderr, out.stderr[-2000:]

        diff = json.loads(processor(s, "replay", "diff", "--json", "--samples", "3").stdout)
        assert diff["caught_up"] and (diff["live_generation"], diff["new_generation"]) == (1, 2)
        for stage, idx in (("lead", 0), ("booking", 3), ("transaction", 4)):
            for channel in CHANNELS + [None]:
                live = [r for r in before.values() if r[idx] and (r[1] == channel)]
                new = [r for r in after.values() if r[idx] and (r[1] == channel)]
                row = next((r for r in diff["stages"] if r["stage"] == stage and r["channel"] == channel), None)
                if not live and not new:
                    assert row is None
                    continue
                assert row is not None, (stage, channel)
                assert (row["live_contacts"], row["new_contacts"]) == (len(live), len(new)), (stage, channel, row)
                assert Decimal(row["live_revenue"]) == sum((r[5] for r in live), Decimal(0))
                assert Decimal(row["new_revenue"]) == sum((r[5] for r in new), Decimal(0))
        moved = {m["change"]: m for m in diff["moved"]}
        gained = {p for p in before if not before[p][0] and after[p][0]}
        lost = {p for p in before if before[p][0] and not after[p][0]}
        assert moved["lead gained"]["contacts"] == len(gained)
        assert moved["lead lost"]["contacts"] == len(lost)
        assert set(moved["lead gained"]["samples"]) <= {f"default {p}" for p in gained}
        assert len(moved["lead gained"]["samples"]) == min(3, len(gained))

        out = processor(s, "replay", "abandon")
        assert "generation 2 abandoned" in out.stdout, out.stdout
        assert generations(s) == [("1", "live"), ("2", "abandoned")]
        assert s.sql("SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'funnel_gen_2'") == "0"
        assert table(s) == before

        # The slot is free again; review, then switch with the subcommand.
        processor(s, "replay", "--from", "earliest", "--review")
        out = processor(s, "replay", "switch")
        assert "switched: generation 3 is live" in out.stdout, out.stdout
        assert table(s) == after
    finally:
        s.stop()


def test_expired_records_are_refused(tmp_path):
    s = Services(tmp_path)
    try:
        send(s, Traffic(3).batch(400, "A"))
        wait_until("the sink to apply the traffic", lambda: sink_caught_up(s), timeout=120)
        # Retention deleted the start of partition 0 (as delete.retention would).
        admin = AdminClient({"bootstrap.servers": s.brokers})
        c = Consumer({"bootstrap.servers": s.brokers, "group.id": s.name + "-x"})
        high = c.get_watermark_offsets(TopicPartition(s.topic, 0), timeout=30)[1]
        c.close()
        assert high >= 3
        for f in admin.delete_records([TopicPartition(s.topic, 0, 2)]).values():
            f.result(30)
        out = processor(s, "replay", "--from", "earliest", check=False)
        assert out.returncode != 0, out.stdout
        assert "partition 0: the log starts at offset 2" in out.stderr and "2 records have expired" in out.stderr, \
            out.stderr[-2000:]
        assert generations(s) == [("1", "live")]
    finally:
        s.stop()


def test_a_reset_with_kafka_tools_is_refused_then_replayed(tmp_path, ingest_only):
    s = ingest_only
    procs = Processors(s, tmp_path)
    try:
        p = procs.start()
        traffic = Traffic(4)
        sent = traffic.batch(600, "A")
        send(s, sent)
        wait_until("the sink to apply the traffic", lambda: sink_caught_up(s), timeout=120)
        put_rules(s, "B")
        procs.stop_all()
        assert p.wait(30) is not None

        # What an engineer used to do: reset the group with Kafka's own tool.
        reset = subprocess.run([str(LOCAL / "bin" / "kafka-consumer-groups"), "--bootstrap-server", s.brokers,
                                "--group", s.name, "--topic", s.topic, "--reset-offsets", "--to-earliest",
                                "--execute"], capture_output=True, text=True, timeout=120)
        assert reset.returncode == 0, reset.stdout + reset.stderr

        p = procs.start()
        assert p.wait(60) != 0, "the processor refuses to start"
        log = p.log.read_text()
        assert "changed by another tool" in log and "funnel-processor replay --from kafka" in log, log[-3000:]
        assert "funnel-processor offsets sync" in log
        before, _ = fold(sent, lambda i: "A")
        assert table(s) == before, "nothing was applied twice or skipped"

        show = processor(s, "offsets", "show")
        assert "another tool" in show.stdout, show.stdout

        # The replay from the reset offsets: it needs running processors to build.
        replay = subprocess.Popen([str(Path(env("FUNNEL_BIN")) / "funnel-processor"), "replay", "--from", "kafka"],
                                  env=s.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The replay gives the group its offsets back (as Funnel's) once the generation exists;
        # a processor started before that would refuse again.
        wait_until("the replay to create generation 2 and restore the group's offsets",
                   lambda: ("2", "building") in generations(s)
                   and "another tool" not in processor(s, "offsets", "show").stdout, timeout=60)
        procs.start()
        out, err = replay.communicate(timeout=300)
        assert replay.returncode == 0, out + err[-3000:]
        assert "switched: generation 2 is live" in out, out
        expected, events = fold(sent, lambda i: "B")
        assert_equal(s, expected, events, "after the replay from the reset offsets")
        show = processor(s, "offsets", "show")
        assert "another tool" not in show.stdout, show.stdout
    finally:
        procs.stop_all()


def test_several_instances_build_a_generation_while_one_crashes(tmp_path, ingest_only):
    """Two processors share both generations' partitions; one is killed mid-build and a third
    joins. The partitions that move have their state rebuilt from the new generation's rows, and
    the tables still end equal to the oracle (A before the point, B after it)."""
    s = ingest_only
    # Small batches that each hold 200 ms before the PostgreSQL commit, so the build is still
    # running when an instance dies.
    procs = Processors(s, tmp_path, FUNNEL_BATCH_MAX="40", FUNNEL_REPLAY_BATCH_MAX="40",
                       FAILPOINTS="before-pg-commit=sleep(200)")
    try:
        a, b = procs.start(), procs.start()
        traffic = Traffic(5)
        before, after = traffic.batch(1000, "A"), traffic.batch(1000, "A")
        point = send_around_a_point(s, before, after)
        put_rules(s, "B")

        replay = subprocess.Popen([str(Path(env("FUNNEL_BIN")) / "funnel-processor"), "replay", "--from",
                                   point.isoformat()], env=s.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)

        def built():
            """Per partition, the next offset generation 2 has applied."""
            if ("2", "building") not in generations(s):
                return {}
            rows = s.sql("SELECT partition, next_offset FROM funnel_gen_2.funnel_sink_offsets")
            return {int(p): int(o) for p, o in (line.split("|") for line in rows.splitlines() if line)}

        def building_on(proc):
            """The generation 2 partitions `proc` was given (it logs each assignment)."""
            parts = set()
            for line in proc.log.read_text().splitlines():
                if '"partitions assigned"' in line:
                    rec = json.loads(line)
                    if {"name": "generation", "n": 2} in rec.get("spans", []):
                        parts |= set(json.loads(rec["fields"]["partitions"]))
            return parts
        # b joins generation 2's group after a took every partition; once b has applied more
        # than a batch in flight on a could account for, b dies.
        b_parts = wait_until("b to be given partitions of generation 2", lambda: building_on(b), timeout=120)
        base = built()
        wait_until("b to apply records of generation 2", lambda: sum(
            built().get(p, 0) - base.get(p, 0) for p in b_parts) > 80, timeout=120, interval=0.05)
        b.send_signal(signal.SIGKILL)
        b.wait(30)
        killed_at = sum(built().values())
        c = procs.start()
        out, err = replay.communicate(timeout=600)
        assert replay.returncode == 0, out + err[-3000:] + procs.logs()
        assert "switched: generation 2 is live" in out, out
        total = int(s.sql("SELECT sum(next_offset) FROM funnel_sink_offsets"))
        print(f"\ngeneration 2 had applied {killed_at} of {total} records when an instance was killed")
        assert killed_at < total, "the instance died mid-build"

        late = {id(i) for i in after}
        expected, events = fold(before + after, lambda i: "B" if id(i) in late else "A")
        assert_equal(s, expected, events, "after a replay built by instances that came and went")
        assert dead_letters(s) == 0
        for p in (a, c):
            assert p.poll() is None, procs.logs()
        # Metrics are the live generation's only: the build's rebuilds are read from the logs.
        rebuilt = [line for p in (a, c) for line in p.log.read_text().splitlines()
                   if '"state does not match the sink; rebuilding the partition"' in line
                   and {"name": "generation", "n": 2} in json.loads(line).get("spans", [])]
        print(f"generation 2 partition states rebuilt on the survivors: {len(rebuilt)}")
        assert rebuilt, "partitions of generation 2 that moved had their state rebuilt"
    finally:
        procs.stop_all()
