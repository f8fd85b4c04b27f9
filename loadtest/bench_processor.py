"""make bench-processor (run through loadtest/bench-processor.sh, which builds and starts the stack).

Two topics are pre-filled with the same number of generated records: one over a million contacts,
one over ten thousand. On the first, in one run:
  - kafka-consumer-perf-test reads the topic: the ceiling for reading;
  - `funnel-loadtest bench-upsert` writes the same rows straight into PostgreSQL in batched UNNEST
    upserts: the ceiling for writing;
  - the processor (release build) consumes the topic from a new consumer group into an empty
    database, exactly once (synchronous_commit on), timed from launch until the offsets stored
    in PostgreSQL reach the end of the topic; then the tables are checked against the records;
  - `funnel-loadtest bench-naive` consumes it the way the seeds' workers do (one upsert and one
    offset commit per message) for a fixed time.
The processor then consumes the second topic, for its resident memory at ten thousand contacts.
Last, BENCH_INSTANCES (2) processors in one consumer group consume the first topic again: on this
machine the single processor is bound by its one PostgreSQL connection, and instances scale out
by partition.
Settings: BENCH_MESSAGES, BENCH_CONTACTS, BENCH_SMALL_CONTACTS, BENCH_NAIVE_SECONDS, BENCH_INSTANCES.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REL = Path(os.environ["FUNNEL_REL"])
KAFKA_BIN = ROOT / "infra/local/bin"
BROKERS = os.environ["FUNNEL_KAFKA_BROKERS"]
PARTITIONS = int(os.environ["FUNNEL_TOPIC_PARTITIONS"])
MESSAGES = int(os.environ.get("BENCH_MESSAGES", 2_000_000))
CONTACTS = int(os.environ.get("BENCH_CONTACTS", 1_000_000))
SMALL_CONTACTS = int(os.environ.get("BENCH_SMALL_CONTACTS", 10_000))
NAIVE_SECONDS = int(os.environ.get("BENCH_NAIVE_SECONDS", 30))
# A last run with this many instances in one consumer group on the big topic (1: skipped).
INSTANCES = int(os.environ.get("BENCH_INSTANCES", 2))
OUT = Path(os.environ.get("FUNNEL_STACK_DIR", ROOT / ".funnel")) / "bench-processor"
RUN = str(int(time.time()))
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]


def log(msg):
    print(f"[bench-processor] {msg}", file=sys.stderr, flush=True)


def psql(url, sql):
    return subprocess.run([str(PG_BIN / "psql"), url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
                          check=True, capture_output=True, text=True).stdout.strip()


MAIN_URL = os.environ["DATABASE_URL"]
BENCH_URL = MAIN_URL.rsplit("/", 1)[0] + "/funnel_bench"
BENCH_ENV = {**os.environ, "DATABASE_URL": BENCH_URL, "FUNNEL_LOG": "warn"}


def loadtest(*args):
    out = subprocess.run([str(REL / "funnel-loadtest"), *args], env=BENCH_ENV, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"funnel-loadtest {args[0]} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def data_args(contacts):
    return ["--messages", str(MESSAGES), "--contacts", str(contacts), "--seed", "1"]


def empty_tables():
    # The public names are views on the live generation's tables (docs/replay.md).
    psql(BENCH_URL, "DO $$ BEGIN EXECUTE format('TRUNCATE %1$I.funnel_contacts, %1$I.funnel_stage_events, "
                    "%1$I.funnel_sink_offsets, %1$I.funnel_sink_topics', funnel_live_schema()); END $$")
    live = psql(BENCH_URL, "SELECT funnel_live_schema()")
    psql(BENCH_URL, f'VACUUM ANALYZE "{live}".funnel_contacts')


def prefill(contacts):
    topic = f"bench.{RUN}.c{contacts}"
    subprocess.run([str(KAFKA_BIN / "kafka-topics"), "--bootstrap-server", BROKERS, "--create", "--topic", topic,
                    "--partitions", str(PARTITIONS), "--replication-factor", "1"], check=True, capture_output=True)
    r = loadtest("bench-prefill", *data_args(contacts), "--topic-messages", topic)
    log(f"pre-filled {topic}: {r['records']} records of {r['average_record_bytes']} bytes on average "
        f"for {contacts} contacts ({r['records_per_second']:.0f} records/s)")
    return topic, r


def perf_test(topic):
    log(f"kafka-consumer-perf-test on {topic}")
    out = subprocess.run([str(KAFKA_BIN / "kafka-consumer-perf-test"), "--bootstrap-server", BROKERS, "--topic", topic,
                          "--num-records", str(MESSAGES), "--group", f"perf-{RUN}", "--timeout", "60000"],
                         capture_output=True, text=True, check=True).stdout
    # start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec,
    # rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
    line = [ln for ln in out.splitlines() if ln.count(",") >= 9][-1]
    f = [x.strip() for x in line.split(",")]
    return {"messages": int(f[4]), "messages_per_second": float(f[5]),
            "fetch_messages_per_second": float(f[9]), "rebalance_ms": float(f[6])}


def status_kb(pid, field):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


def processor(topic, contacts, label, instances=1):
    empty_tables()
    group = f"bench-{RUN}-{label}"
    log(f"processor on {topic} ({contacts} contacts, {instances} instance(s))")
    procs = []
    started = time.monotonic()
    for i in range(instances):
        state = OUT / f"state-{label}-{i}"
        shutil.rmtree(state, ignore_errors=True)
        env = {**BENCH_ENV, "FUNNEL_TOPIC_MESSAGES": topic, "FUNNEL_CONSUMER_GROUP": group,
               "FUNNEL_STATE_DIR": str(state), "FUNNEL_PROCESSOR_ADDR": ""}
        logf = open(OUT / f"processor-{label}-{i}.log", "w")
        procs.append((subprocess.Popen([str(REL / "funnel-processor"), "run"], env=env,
                                       stdout=logf, stderr=subprocess.STDOUT), logf))
    first = None
    samples = []
    while True:
        done = int(psql(BENCH_URL, "SELECT coalesce(sum(next_offset), 0) FROM funnel_sink_offsets "
                                   f"WHERE consumer_group = '{group}'"))
        now = time.monotonic()
        samples.append((round(now - started, 2), done, sum(status_kb(p.pid, "VmRSS") for p, _ in procs)))
        if done > 0 and first is None:
            first = (now, done)
        if done >= MESSAGES:
            break
        for p, logf in procs:
            if p.poll() is not None:
                raise SystemExit(f"a processor exited ({p.returncode}); see {logf.name}")
        time.sleep(0.5)
    seconds = now - started
    hwm = max(status_kb(p.pid, "VmHWM") for p, _ in procs)
    rss = max(status_kb(p.pid, "VmRSS") for p, _ in procs)
    for p, logf in procs:
        p.terminate()
        p.wait(60)
        logf.close()
    check = loadtest("bench-check", *data_args(contacts))
    steady = (MESSAGES - first[1]) / max(now - first[0], 1e-9)
    result = {"contacts": contacts, "messages": MESSAGES, "instances": instances, "seconds": seconds,
              "messages_per_second": MESSAGES / seconds, "steady_messages_per_second": steady,
              "peak_rss_kb": hwm, "end_rss_kb": rss, "tables_equal_records": check["equal"],
              "totals": check["actual"], "samples": samples}
    log(f"  {MESSAGES} records in {seconds:.1f} s = {result['messages_per_second']:.0f}/s "
        f"(after the first commit {steady:.0f}/s); peak RSS {hwm / 1024:.0f} MiB (largest instance); "
        f"tables equal the records: {check['equal']}")
    return result


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    psql(MAIN_URL, "DROP DATABASE IF EXISTS funnel_bench")
    psql(MAIN_URL, "CREATE DATABASE funnel_bench")
    subprocess.run([str(REL / "funnel-processor"), "migrate"], env=BENCH_ENV, check=True, capture_output=True)
    settings = {k: psql(BENCH_URL, f"SHOW {k}") for k in ["synchronous_commit", "fsync", "shared_buffers"]}
    if settings["synchronous_commit"] != "on" or settings["fsync"] != "on":
        raise SystemExit(f"PostgreSQL must commit durably for this benchmark: {settings}")
    r = {"messages": MESSAGES, "partitions": PARTITIONS, "postgres": settings,
         "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]}

    big, r["prefill_big"] = prefill(CONTACTS)
    small, r["prefill_small"] = prefill(SMALL_CONTACTS)
    r["perf_test"] = perf_test(big)
    log(f"  {r['perf_test']['messages_per_second']:.0f} records/s")
    empty_tables()
    log("bare UNNEST upsert of the same rows")
    r["bare_upsert"] = loadtest("bench-upsert", *data_args(CONTACTS))
    log(f"  {r['bare_upsert']['messages_per_second']:.0f} records/s")
    r["processor_big"] = processor(big, CONTACTS, "big")
    empty_tables()
    log(f"naive consumer (one upsert and one offset commit per message) for {NAIVE_SECONDS} s")
    r["naive"] = loadtest("bench-naive", "--topic-messages", big, "--group", f"naive-{RUN}", "--seconds", str(NAIVE_SECONDS))
    n = r["naive"]
    log(f"  {n['messages_per_second']:.0f} records/s: per record {1e6 * n['postgres_seconds'] / n['messages']:.0f} µs "
        f"in the upsert and its commit, {1e6 * n['kafka_commit_seconds'] / n['messages']:.0f} µs in the offset commit")
    r["processor_small"] = processor(small, SMALL_CONTACTS, "small")
    if INSTANCES > 1:
        r["processor_scaled"] = processor(big, CONTACTS, "scaled", INSTANCES)
    psql(MAIN_URL, "DROP DATABASE IF EXISTS funnel_bench")

    read = r["perf_test"]["messages_per_second"]
    write = r["bare_upsert"]["messages_per_second"]
    ours = r["processor_big"]["messages_per_second"]
    naive = r["naive"]["messages_per_second"]
    rss_small = r["processor_small"]["peak_rss_kb"]
    rss_big = r["processor_big"]["peak_rss_kb"]
    n = r["naive"]
    r["ratios"] = {
        "processor_to_lower_ceiling": ours / min(read, write),
        "processor_to_naive": ours / naive,
        "peak_rss_big_to_small": rss_big / rss_small,
    }
    (OUT / "results.json").write_text(json.dumps(r, indent=1))
    ok = lambda good: "met" if good else "MISSED"  # noqa: E731
    rows = [
        ("kafka-consumer-perf-test (ceiling for reading)", read, "baseline"),
        ("bare batched UNNEST upsert, time in PostgreSQL (ceiling for writing)", write, "baseline"),
        (f"funnel-processor, {CONTACTS:,} contacts, launch to last offset", ours,
         f"{ours / min(read, write):.2f}x the lower ceiling (target 0.7x: {ok(ours >= 0.7 * min(read, write))})"),
        (f"funnel-processor, {CONTACTS:,} contacts, after the first commit", r["processor_big"]["steady_messages_per_second"], ""),
        ("one upsert + one offset commit per message (the seeds' workers)", naive,
         f"processor is {ours / naive:.0f}x (target 30x: {ok(ours >= 30 * naive)})"),
        (f"funnel-processor, {SMALL_CONTACTS:,} contacts, launch to last offset", r["processor_small"]["messages_per_second"], ""),
    ]
    if "processor_scaled" in r:
        x = r["processor_scaled"]["messages_per_second"]
        rows.append((f"{INSTANCES} funnel-processor instances in one group, {CONTACTS:,} contacts", x,
                     f"{x / min(read, write):.2f}x the lower ceiling, {x / naive:.0f}x the naive consumer"))
    print(f"\n{MESSAGES:,} records, {PARTITIONS} partitions, {os.cpu_count()} CPUs, "
          f"synchronous_commit={settings['synchronous_commit']}, load average at start {r['load_average_at_start']:.2f}\n")
    print("| run | records/s | ratio |")
    print("| --- | ---: | --- |")
    for name, rate, ratio in rows:
        print(f"| {name} | {rate:,.0f} | {ratio} |")
    print()
    print("| contacts | peak RSS | RSS at the end | tables equal the records |")
    print("| ---: | ---: | ---: | --- |")
    for k in ["processor_small", "processor_big"]:
        x = r[k]
        print(f"| {x['contacts']:,} | {x['peak_rss_kb'] / 1024:.0f} MiB | {x['end_rss_kb'] / 1024:.0f} MiB | {x['tables_equal_records']} |")
    print(f"\npeak RSS at {CONTACTS:,} contacts is {rss_big / rss_small:.2f}x that at {SMALL_CONTACTS:,} "
          f"(target at most 2x: {ok(rss_big <= 2 * rss_small)})")
    print(f"the naive consumer spent {1e6 * n['postgres_seconds'] / n['messages']:.0f} µs per record in PostgreSQL "
          f"and {1e6 * n['kafka_commit_seconds'] / n['messages']:.0f} µs in Kafka offset commits; the bare upsert "
          f"{1e6 / write:.0f} µs per record")
    print(f"full results: {OUT / 'results.json'}")
    if not (r["processor_big"]["tables_equal_records"] and r["processor_small"]["tables_equal_records"]):
        raise SystemExit("the tables do not equal the records")


if __name__ == "__main__":
    main()
