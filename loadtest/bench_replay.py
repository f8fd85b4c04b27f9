"""make bench-replay (run through loadtest/bench-replay.sh, which builds and starts the stack).

A replay of BENCH_MESSAGES (1,000,000) generated records, timed end to end:
  - kafka-consumer-perf-test reads the topic: the ceiling for reading;
  - the processor (release build) consumes the topic into an empty database, exactly once
    (synchronous_commit on): the first pass, timed from launch until its offsets reach the end;
    then the tables are checked against the records;
  - a new rule set is stored, and `funnel-processor replay --from earliest` runs while that
    processor keeps running, timed from the command's launch until it has switched. It creates
    the generation, the running processor builds it (reading the whole topic again, classifying
    under the new rules, writing a second copy of the tables), the command waits for it to catch
    up, prints the comparison and switches the views.
The replay's time is reported as a ratio to the first pass and to the read ceiling, measured in
the same run (this machine is shared and noisy).
Settings: BENCH_MESSAGES, BENCH_CONTACTS.
"""

import json
import os
import re
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
MESSAGES = int(os.environ.get("BENCH_MESSAGES", 1_000_000))
CONTACTS = int(os.environ.get("BENCH_CONTACTS", 200_000))
OUT = Path(os.environ.get("FUNNEL_STACK_DIR", ROOT / ".funnel")) / "bench-replay"
RUN = str(int(time.time()))
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
MAIN_URL = os.environ["DATABASE_URL"]
BENCH_URL = MAIN_URL.rsplit("/", 1)[0] + "/funnel_bench_replay"
TOPIC = f"bench-replay.{RUN}"
GROUP = f"bench-replay-{RUN}"
ENV = {**os.environ, "DATABASE_URL": BENCH_URL, "FUNNEL_LOG": "warn", "FUNNEL_TOPIC_MESSAGES": TOPIC,
       "FUNNEL_CONSUMER_GROUP": GROUP, "FUNNEL_STATE_DIR": str(OUT / "state"), "FUNNEL_PROCESSOR_ADDR": "",
       "FUNNEL_TOPIC_DLQ": f"{TOPIC}.dlq"}
# The new rule set: the default one without `pricelist` as a lead, plus `halo` as one; the
# generated enquiries use both, so the replay moves contacts in both directions.
NEW_RULES = ("SELECT jsonb_agg(r) || '[{\"id\": \"lead-halo\", \"stage\": \"lead\", \"match\": \"word\", "
             "\"pattern\": \"halo\", \"direction\": \"inbound\", \"priority\": 100}]'::jsonb "
             "FROM funnel_active_rule_sets s, jsonb_array_elements(s.rules) r "
             "WHERE s.tenant = 'default' AND r->>'id' <> 'lead-pricelist'")


def log(msg):
    print(f"[bench-replay] {msg}", file=sys.stderr, flush=True)


def psql(url, sql):
    return subprocess.run([str(PG_BIN / "psql"), url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
                          check=True, capture_output=True, text=True).stdout.strip()


def loadtest(*args):
    out = subprocess.run([str(REL / "funnel-loadtest"), *args], env=ENV, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"funnel-loadtest {args[0]} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def data_args():
    return ["--messages", str(MESSAGES), "--contacts", str(CONTACTS), "--seed", "1"]


def applied():
    return int(psql(BENCH_URL, f"SELECT coalesce(sum(next_offset), 0) FROM funnel_sink_offsets "
                               f"WHERE consumer_group = '{GROUP}'"))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(OUT / "state", ignore_errors=True)
    psql(MAIN_URL, "DROP DATABASE IF EXISTS funnel_bench_replay")
    psql(MAIN_URL, "CREATE DATABASE funnel_bench_replay")
    subprocess.run([str(REL / "funnel-processor"), "migrate"], env=ENV, check=True, capture_output=True)
    settings = {k: psql(BENCH_URL, f"SHOW {k}") for k in ["synchronous_commit", "fsync"]}
    if settings != {"synchronous_commit": "on", "fsync": "on"}:
        raise SystemExit(f"PostgreSQL must commit durably for this benchmark: {settings}")
    r = {"messages": MESSAGES, "contacts": CONTACTS, "partitions": PARTITIONS, "cpus": os.cpu_count(),
         "load_average_at_start": os.getloadavg()[0]}
    for t in (TOPIC, f"{TOPIC}.dlq"):
        subprocess.run([str(KAFKA_BIN / "kafka-topics"), "--bootstrap-server", BROKERS, "--create", "--topic", t,
                        "--partitions", str(PARTITIONS), "--replication-factor", "1"], check=True,
                       capture_output=True)
    r["prefill"] = loadtest("bench-prefill", *data_args(), "--topic-messages", TOPIC)
    log(f"pre-filled {TOPIC}: {MESSAGES} records for {CONTACTS} contacts")

    out = subprocess.run([str(KAFKA_BIN / "kafka-consumer-perf-test"), "--bootstrap-server", BROKERS, "--topic", TOPIC,
                          "--num-records", str(MESSAGES), "--group", f"perf-{RUN}", "--timeout", "60000"],
                         capture_output=True, text=True, check=True).stdout
    f = [x.strip() for x in [ln for ln in out.splitlines() if ln.count(",") >= 9][-1].split(",")]
    read = float(f[5])
    r["read_ceiling_records_per_second"] = read
    log(f"kafka-consumer-perf-test: {read:.0f} records/s")

    logf = open(OUT / "processor.log", "w")
    started = time.monotonic()
    proc = subprocess.Popen([str(REL / "funnel-processor"), "run"], env=ENV, stdout=logf, stderr=subprocess.STDOUT)
    try:
        while applied() < MESSAGES:
            if proc.poll() is not None:
                raise SystemExit(f"the processor exited ({proc.returncode}); see {logf.name}")
            time.sleep(0.25)
        first_pass = time.monotonic() - started
        r["first_pass_seconds"] = first_pass
        check = loadtest("bench-check", *data_args())
        r["first_pass_tables_equal_records"] = check["equal"]
        log(f"first pass: {MESSAGES} records in {first_pass:.1f} s ({MESSAGES / first_pass:.0f}/s); "
            f"tables equal the records: {check['equal']}")

        psql(BENCH_URL, f"INSERT INTO funnel_rule_sets (tenant, rules, created_by) "
                        f"SELECT 'default', ({NEW_RULES}), 'bench-replay'")
        time.sleep(3)  # the running processor picks the new set up (FUNNEL_RULES_POLL_MS)
        started = time.monotonic()
        out = subprocess.run([str(REL / "funnel-processor"), "replay", "--from", "earliest"], env=ENV,
                             capture_output=True, text=True, timeout=1800)
        replay = time.monotonic() - started
        (OUT / "replay.out").write_text(out.stdout + out.stderr)
        if out.returncode != 0 or "switched: generation 2 is live" not in out.stdout:
            raise SystemExit(f"the replay failed:\n{out.stdout}\n{out.stderr[-3000:]}")
        caught = re.search(r"caught up: (\d+) records read in ([\d.]+) s", out.stdout)
        r["replay_seconds"] = replay
        r["replay_build_seconds"] = float(caught.group(2)) if caught else None
        r["replay_output"] = out.stdout
        same = psql(BENCH_URL, "SELECT (SELECT count(*) FROM funnel_gen_1.funnel_contacts) = "
                               "(SELECT count(*) FROM funnel_gen_2.funnel_contacts)")
        r["same_contacts"] = same == "t"
        for kind in ("lead gained", "lead lost"):
            m = re.search(kind + r"\s+(\d+) contacts", out.stdout)
            r[kind.replace(" ", "_")] = int(m.group(1)) if m else 0
        m = re.search(r"built in ([\d.]+) s", out.stdout)
        r["complete_seconds"] = float(m.group(1)) if m else None
    finally:
        proc.terminate()
        proc.wait(60)
        logf.close()
    psql(MAIN_URL, "DROP DATABASE IF EXISTS funnel_bench_replay")
    (OUT / "results.json").write_text(json.dumps(r, indent=1))

    print(f"\n{MESSAGES:,} records over {CONTACTS:,} contacts, {PARTITIONS} partitions, {os.cpu_count()} CPUs, "
          f"synchronous_commit=on, load average at start {r['load_average_at_start']:.2f}\n")
    print("| run | seconds | records/s | ratio |")
    print("| --- | ---: | ---: | --- |")
    print(f"| kafka-consumer-perf-test (ceiling for reading) | {MESSAGES / read:.1f} | {read:,.0f} | baseline |")
    print(f"| first pass: funnel-processor, launch to last offset | {first_pass:.1f} | {MESSAGES / first_pass:,.0f} "
          f"| baseline |")
    print(f"| `funnel-processor replay --from earliest`, launch to switched | {replay:.1f} | {MESSAGES / replay:,.0f} "
          f"| {replay / first_pass:.2f}x the first pass's time, {read * replay / MESSAGES:.0f}x the read ceiling's; "
          f"target under 60 s: {'met' if replay < 60 else 'MISSED'} |")
    print(f"\nthe replay made {r['lead_gained']:,} contacts leads and {r['lead_lost']:,} not; "
          f"indexes, funnel_daily and triggers of the new generation took {r['complete_seconds']} s of it; "
          f"both generations have the same contacts: {r['same_contacts']}")


if __name__ == "__main__":
    main()
