"""funnel-loadtest as users run it: generate a dataset, send it, verify the tables; verify exits
non-zero and names the difference when a row is wrong."""

import json
import subprocess
from pathlib import Path

from conftest import env


def loadtest(services, *args, check=True):
    return subprocess.run([str(Path(env("FUNNEL_BIN")) / "funnel-loadtest"), *args],
                          env=services.env, capture_output=True, text=True, check=check)


def test_generate_send_verify(services, tmp_path):
    ds = tmp_path / "ds"
    out = loadtest(services, "generate", "--seed", "4", "--contacts", "40", "--out", str(ds))
    assert "messages" in out.stdout
    first = (ds / "traffic.jsonl").read_text()
    loadtest(services, "generate", "--seed", "4", "--contacts", "40", "--out", str(tmp_path / "again"))
    assert (tmp_path / "again" / "traffic.jsonl").read_text() == first, "generate is deterministic"
    assert (ds / "rules.csv").read_text().startswith("stage,match,pattern,channel,direction,priority")

    sent = loadtest(services, "send", "--dataset", str(ds), "--mode", "http", "--url", services.url,
                    "--token", services.token, "--json")
    report = json.loads(sent.stdout)
    rejects = sum(1 for line in first.splitlines() if json.loads(line)["expect"] == "reject")
    assert report["rejected"] == rejects and report["failed"] == 0 and report["unexpected"] == 0, report
    assert report["status_2xx"] > 0 and report["p99_ms"] > 0

    ok = loadtest(services, "verify", "--dataset", str(ds), "--wait", "90")
    assert ok.stdout.strip().endswith("-> EQUAL"), ok.stdout

    phone = json.loads((ds / "expected.jsonl").read_text().splitlines()[0])["phone"]
    services.sql(f"UPDATE funnel_contacts SET transaction_count = transaction_count + 1 WHERE phone = '{phone}'")
    bad = loadtest(services, "verify", "--dataset", str(ds), check=False)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"differs  default/{phone} transaction_count" in bad.stdout, bad.stdout
    assert "-> DIFFERENT" in bad.stdout
