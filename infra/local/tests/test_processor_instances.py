"""Several funnel-processor instances in one consumer group: partitions rebalance
(cooperative-sticky) as instances come and go, each newly assigned partition's state is
rebuilt, a zombie's late batch is fenced, and the tables end equal to the generator's ground
truth (which is what one instance produces)."""

import json
import signal
import time

from conftest import Processors, loadtest, progress, wait_until


def send_dataset(services, tmp_path, seed, contacts):
    ds = tmp_path / "ds"
    loadtest(services, "generate", "--seed", str(seed), "--contacts", str(contacts), "--out", str(ds))
    sent = json.loads(loadtest(services, "send", "--dataset", str(ds), "--mode", "kafka", "--json").stdout)
    assert sent["failed"] == 0 and sent["unexpected"] == 0, sent
    return ds


def verify(services, ds, procs):
    out = loadtest(services, "verify", "--dataset", str(ds), "--wait", "240", check=False)
    print(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0 and out.stdout.strip().endswith("-> EQUAL"), \
        out.stdout[-4000:] + out.stderr[-2000:] + procs.logs()


def test_instances_come_and_go_and_the_rows_stay_exact(ingest_only, tmp_path):
    services = ingest_only
    ds = send_dataset(services, tmp_path, seed=41, contacts=800)
    # Every batch holds 150 ms before its commit, so the instances come and go mid-stream.
    procs = Processors(services, tmp_path, FUNNEL_BATCH_MAX="30", FUNNEL_BATCH_LINGER_MS="5",
                       FAILPOINTS="before-pg-commit=sleep(150)")
    try:
        a, b, c = procs.start(), procs.start(), procs.start()
        wait_until("three instances to share the partitions", lambda: all(
            (procs.metric(p, 'funnel_processor_rebalances_total{kind="assigned"}') or 0) > 0 for p in (a, b, c)),
            timeout=90)
        print(f"3 instances running; committed {progress(services)}")
        # A graceful stop mid-stream: its partitions move to the other two.
        b.terminate()
        assert b.wait(60) == 0, procs.logs()
        print(f"stopped instance 1; committed {progress(services)}")
        d = procs.start()
        # A crash mid-stream while a fourth joins.
        time.sleep(1.5)
        c.send_signal(signal.SIGKILL)
        c.wait(30)
        killed_at = progress(services)
        print(f"killed instance 2; committed {killed_at}")
        verify(services, ds, procs)
        total = progress(services)
        assert killed_at < total, "the instances changed mid-stream"
        for p in (a, d):
            assigned = procs.metric(p, 'funnel_processor_rebalances_total{kind="assigned"}')
            revoked = procs.metric(p, 'funnel_processor_rebalances_total{kind="revoked"}')
            print(f"instance {p.index}: partitions assigned {assigned:.0f}, revoked {revoked:.0f}")
        restores = sum(procs.metric(p, "funnel_processor_state_restore_seconds_count") or 0 for p in (a, d))
        print(f"partition states rebuilt on the survivors: {restores:.0f}")
        assert restores > 0, "partitions that moved had their state rebuilt"
        for p in (a, d):
            assert p.poll() is None, procs.logs()
    finally:
        procs.stop_all()


def test_a_zombie_instance_is_fenced(ingest_only, tmp_path):
    services = ingest_only
    ds = send_dataset(services, tmp_path, seed=43, contacts=300)
    procs = Processors(services, tmp_path, FUNNEL_BATCH_MAX="30", FUNNEL_BATCH_LINGER_MS="5")
    try:
        # The zombie-to-be holds every batch for 3 s before its PostgreSQL commit, so when it
        # is frozen it is almost surely holding one.
        zombie = procs.start("before-pg-commit=sleep(3000)")
        wait_until("the first instance to commit", lambda: progress(services) > 0, timeout=60)
        time.sleep(1)
        zombie.send_signal(signal.SIGSTOP)
        frozen_at = progress(services)
        print(f"SIGSTOP instance 0 at committed {frozen_at}")
        # Past the session timeout (10 s) the group hands its partitions to the other instance.
        other = procs.start()
        wait_until("the other instance to take over and commit", lambda: progress(services) > frozen_at + 200,
                   timeout=120)
        zombie.send_signal(signal.SIGCONT)
        print(f"SIGCONT instance 0 at committed {progress(services)}")
        wait_until("the zombie's late batch to be fenced", lambda: (procs.metric(
            zombie, 'funnel_processor_batch_retries_total{reason="fenced"}') or 0) >= 1, timeout=60)
        print("instance 0's late batch was fenced")
        zombie.terminate()
        zombie.wait(60)
        verify(services, ds, procs)
        assert other.poll() is None, procs.logs()
    finally:
        procs.stop_all()


def test_a_rebalance_in_the_middle_of_a_batch(ingest_only, tmp_path):
    services = ingest_only
    ds = send_dataset(services, tmp_path, seed=47, contacts=300)
    procs = Processors(services, tmp_path, FUNNEL_BATCH_MAX="60", FUNNEL_BATCH_LINGER_MS="5")
    try:
        # The first instance holds each batch 2 s before its commit; a second instance joins
        # while it holds one, so partitions of that batch are revoked before it commits.
        first = procs.start("before-pg-commit=sleep(2000)")
        wait_until("the first instance to commit", lambda: progress(services) > 0, timeout=60)
        time.sleep(0.5)
        second = procs.start()
        wait_until("the first instance to give partitions up", lambda: (procs.metric(
            first, 'funnel_processor_rebalances_total{kind="revoked"}') or 0) > 0, timeout=60)
        revoked = procs.metric(first, 'funnel_processor_rebalances_total{kind="revoked"}')
        print(f"second instance joined mid-batch; {revoked:.0f} partitions revoked from the first")
        first.terminate()
        first.wait(60)
        verify(services, ds, procs)
        fenced = procs.metric(second, 'funnel_processor_batch_retries_total{reason="fenced"}')
        print(f"batches fenced on the second instance: {fenced:.0f}")
        assert second.poll() is None, procs.logs()
    finally:
        procs.stop_all()
