"""The schema registry unreachable for a while is a transient error for funnel-processor: it
waits and retries, dead-letters nothing for it, and the tables end equal to the ground truth.
The processor reaches the registry through a TCP proxy the test closes and reopens, so the
shared registry keeps serving every other test."""

import json
import socket
import threading
import time
from urllib.parse import urlparse

import requests

from conftest import Processors, loadtest, progress, wait_until


class Proxy:
    """Forwards 127.0.0.1:<port> to a target while open; closed, connections are refused."""

    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.server = None

    def open(self):
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", self.port))
        self.server.listen(64)
        self.conns = []
        threading.Thread(target=self._accept, args=(self.server,), daemon=True).start()

    def close(self):
        # shutdown first: close() alone leaves a socket that a thread blocks on in accept()
        # listening until that accept returns.
        try:
            self.server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.server.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass

    def _accept(self, server):
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass


def test_processor_waits_out_a_registry_outage(ingest_only, tmp_path):
    services = ingest_only
    url = urlparse(services.registry)
    proxy = Proxy(url.hostname, url.port)
    proxy.open()
    procs = Processors(services, tmp_path,
                       FUNNEL_SCHEMA_REGISTRY_URL=f"http://127.0.0.1:{proxy.port}{url.path}")
    try:
        p = procs.start()
        def ready():
            try:
                return requests.get(p.url + "/health/ready", timeout=2).status_code == 200
            except requests.RequestException:
                return False
        # Ready once its pipeline has started, which includes checking the registry.
        wait_until("the processor to be ready", ready, timeout=60)
        proxy.close()
        # Records arrive while the registry is unreachable: their schema id is unknown to the
        # processor, so it must ask, and cannot.
        ds = tmp_path / "ds"
        loadtest(services, "generate", "--seed", "53", "--contacts", "120", "--out", str(ds))
        sent = json.loads(loadtest(services, "send", "--dataset", str(ds), "--mode", "kafka", "--json").stdout)
        assert sent["failed"] == 0, sent
        wait_until("a transient retry", lambda: (procs.metric(
            p, 'funnel_processor_batch_retries_total{reason="transient"}') or 0) > 0, timeout=60)
        time.sleep(3)
        assert progress(services) == 0, "nothing moves while the registry is away"
        retries = procs.metric(p, 'funnel_processor_batch_retries_total{reason="transient"}')
        print(f"registry unreachable: {retries:.0f} retries, nothing committed")
        proxy.open()
        out = loadtest(services, "verify", "--dataset", str(ds), "--wait", "120", check=False)
        print(out.stdout.strip().splitlines()[-1])
        assert out.returncode == 0 and out.stdout.strip().endswith("-> EQUAL"), out.stdout[-3000:] + procs.logs()
        assert procs.metric(p, "funnel_processor_dead_letters_total") == 0
        assert p.poll() is None, procs.logs()
    finally:
        procs.stop_all()
        proxy.close()
