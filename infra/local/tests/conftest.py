"""Fixtures for the stack and interop tests: they run against the local stack that `make test`
starts, with the binaries cargo built (FUNNEL_BIN). Nothing here skips: a missing stack fails."""

import os
import re
import socket
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parents[3]
LOCAL = ROOT / "infra" / "local"


def env(name):
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run through `make test`, which starts the stack and exports it")
    return value


def psql(url, sql):
    pg_bin = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
    return subprocess.run([str(pg_bin / "psql"), url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
                          check=True, capture_output=True, text=True).stdout.strip()


def stack_exports(stack_env):
    """The `export` lines infra/local/env.sh prints for the stack `stack_env` describes."""
    out = subprocess.run([str(LOCAL / "env.sh")], env=stack_env, check=True, capture_output=True,
                         text=True).stdout
    return dict(re.findall(r"^export (\w+)='([^']*)'", out, re.M))


def migrate(database_url):
    """The migrations of sql/, applied as the database owner (the services only check them)."""
    subprocess.run([str(Path(env("FUNNEL_BIN")) / "funnel-processor"), "migrate"],
                   env=dict(os.environ, DATABASE_URL=database_url), check=True, capture_output=True)


def in_database(url, name):
    """`url` with its database replaced by `name`."""
    return url.rsplit("/", 1)[0] + "/" + name


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, check, timeout=60.0, interval=0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


class Services:
    """funnel-ingest and funnel-processor as subprocesses on a topic and database of their own."""

    def __init__(self, tmp_path, processor=True, name=None, ingest_extra=None):
        """`ingest_extra`: environment funnel-ingest runs with on top of the others'."""
        self.name = name or "py_" + uuid.uuid4().hex[:12]
        self.brokers = env("FUNNEL_KAFKA_BROKERS")
        self.registry = env("FUNNEL_SCHEMA_REGISTRY_URL")
        base = env("DATABASE_URL")
        self.topic = f"{self.name}.chat-messages"
        self.dlq = f"{self.name}.dlq"
        self.partitions = 12
        admin = AdminClient({"bootstrap.servers": self.brokers})
        futures = admin.create_topics([NewTopic(t, self.partitions, 1) for t in (self.topic, self.dlq)])
        for f in futures.values():
            f.result(30)
        psql(base, f"CREATE DATABASE {self.name}")
        # The owner's URL (migrations, the tests' own SQL); each service runs as its own role
        # (docs/security.md), so a grant the services lack fails these tests.
        self.database_url = in_database(base, self.name)
        self.ingest_database_url = in_database(env("FUNNEL_INGEST_DATABASE_URL"), self.name)
        self.processor_database_url = in_database(env("FUNNEL_PROCESSOR_DATABASE_URL"), self.name)
        self.url = f"http://127.0.0.1:{free_port()}"
        self.processor_url = f"http://127.0.0.1:{free_port()}"
        self.env = dict(os.environ,
                        DATABASE_URL=self.processor_database_url,
                        FUNNEL_TOPIC_MESSAGES=self.topic,
                        FUNNEL_TOPIC_DLQ=self.dlq,
                        FUNNEL_CONSUMER_GROUP=self.name,
                        FUNNEL_STATE_DIR=str(tmp_path / "state"),
                        FUNNEL_HTTP_ADDR=self.url.removeprefix("http://"),
                        FUNNEL_PROCESSOR_ADDR=self.processor_url.removeprefix("http://"),
                        FUNNEL_BATCH_LINGER_MS="20",
                        # These tests check answers, not the tenants' rate limits (test_hostile
                        # stores per-tenant limits, which win over these defaults).
                        FUNNEL_LIMIT_READS_PER_SECOND="100000",
                        FUNNEL_LIMIT_MESSAGES_PER_SECOND="1000000",
                        FUNNEL_LIMIT_BURST="2000000")
        bin_dir = Path(env("FUNNEL_BIN"))
        self.logs = tmp_path
        migrate(self.database_url)
        self.ingest_env = dict(self.env, DATABASE_URL=self.ingest_database_url, **(ingest_extra or {}))
        self.token = subprocess.run(
            [str(bin_dir / "funnel-ingest"), "token", "create", "--tenant", "default", "--scope", "ingest,read"],
            env=self.ingest_env, check=True, capture_output=True, text=True).stdout.strip()
        assert self.token.startswith("fnl_"), self.token
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {self.token}"
        self.procs = [
            subprocess.Popen([str(bin_dir / "funnel-ingest")], env=self.ingest_env,
                             stdout=open(tmp_path / "ingest.log", "w"), stderr=subprocess.STDOUT),
        ]
        if processor:
            self.procs.append(subprocess.Popen([str(bin_dir / "funnel-processor")], env=self.env,
                                               stdout=open(tmp_path / "processor.log", "w"),
                                               stderr=subprocess.STDOUT))

        def ready():
            for p in self.procs:
                if p.poll() is not None:
                    raise AssertionError(f"a service exited; logs in {tmp_path}: " + "".join(
                        log.read_text()[-2000:] for log in tmp_path.glob("*.log")))
            try:
                return requests.get(self.url + "/health/live", timeout=1).ok
            except requests.RequestException:
                return False
        wait_until("funnel-ingest to answer", ready)

    def sql(self, query):
        return psql(self.database_url, query)

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def services(tmp_path):
    s = Services(tmp_path)
    yield s
    s.stop()


@pytest.fixture
def ingest_only(tmp_path):
    """The services without funnel-processor: the test runs (and kills) processors itself."""
    s = Services(tmp_path, processor=False)
    yield s
    s.stop()


class Processors:
    """funnel-processor instances a test starts, stops and kills; each has its own state folder,
    log and metrics address."""

    def __init__(self, services, tmp_path, **extra):
        self.services, self.tmp, self.extra = services, tmp_path, extra
        self.started = []

    def start(self, failpoints=None, **extra):
        n = len(self.started)
        url = f"http://127.0.0.1:{free_port()}"
        penv = dict(self.services.env, FUNNEL_STATE_DIR=str(self.tmp / f"state-{n}"),
                    FUNNEL_PROCESSOR_ADDR=url.removeprefix("http://"))
        penv.update(self.extra)
        penv.update(extra)
        if failpoints:
            penv["FAILPOINTS"] = failpoints
        log = self.tmp / f"processor-{n}.log"
        p = subprocess.Popen([str(Path(env("FUNNEL_BIN")) / "funnel-processor")], env=penv,
                             stdout=open(log, "w"), stderr=subprocess.STDOUT)
        p.url, p.log, p.index = url, log, n
        self.started.append(p)
        return p

    def metric(self, p, name):
        try:
            text = requests.get(p.url + "/metrics", timeout=5).text
        except requests.RequestException:
            return None
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return None

    def logs(self):
        return "".join(f"--- {p.log.name}\n" + p.log.read_text()[-2000:] for p in self.started)

    def stop_all(self):
        for p in self.started:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        for p in self.started:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def progress(services):
    """Records the sink has committed, over every partition."""
    return int(services.sql(
        f"SELECT COALESCE(sum(next_offset), 0) FROM funnel_sink_offsets WHERE consumer_group = '{services.name}'"))


def loadtest(services, *args, check=True):
    return subprocess.run([str(Path(env("FUNNEL_BIN")) / "funnel-loadtest"), *args], env=services.env,
                          capture_output=True, text=True, check=check)
