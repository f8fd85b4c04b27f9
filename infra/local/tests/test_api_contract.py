"""The HTTP contract checked by tools nobody here wrote: an OpenAPI validator, schemathesis
fuzzing the live API from its own document, and promtool on /metrics."""

import re
import subprocess
import sys
from pathlib import Path

import requests
from openapi_spec_validator import validate

from conftest import wait_until

BIN = Path(sys.executable).parent


def test_openapi_document_is_valid(services):
    doc = services.http.get(services.url + "/openapi.json", timeout=30).json()
    validate(doc)
    assert doc["openapi"].startswith("3.")
    assert {"/v1/messages", "/v1/messages/batch", "/health/live", "/health/ready", "/metrics"} <= set(doc["paths"])


def schemathesis(services, *args):
    out = subprocess.run(
        [str(BIN / "schemathesis"), "run", services.url + "/openapi.json",
         "-H", f"Authorization: Bearer {services.token}", "--checks", "all", "--seed", "20261124",
         "--generation-deterministic", "--no-color", *args],
        capture_output=True, text=True, timeout=900)
    generated = re.search(r"(\d+) generated", out.stdout)
    assert out.returncode == 0, out.stdout[-6000:]
    assert generated, out.stdout[-3000:]
    return int(generated.group(1))


def test_schemathesis_finds_no_failures(services):
    # positive_data_acceptance is left out: whether a phone number exists depends on a numbering
    # plan that JSON Schema cannot express, so schema-valid phones are (rightly) 422.
    common = ["--exclude-checks", "positive_data_acceptance", "-n", "500"]
    total = schemathesis(services, *common, "--exclude-path", "/v1/messages/batch")
    # The batch answers 202 with per-item rejections by design: a schema-violating item is
    # rejected inside a 202, which negative_data_rejection would report.
    total += schemathesis(services, *common, "--exclude-checks", "negative_data_rejection",
                          "--include-path", "/v1/messages/batch")
    assert total >= 2000, total


def test_metrics_pass_promtool(services):
    res = services.http.post(services.url + "/v1/messages", json={
        "phone": "+6281234560000", "channel": "ads", "text": "info", "sent_at": "2026-11-20T10:00:00Z"}, timeout=30)
    assert res.status_code == 202, res.text
    services.http.post(services.url + "/v1/messages", json={"phone": "1"}, timeout=30)
    metrics = services.http.get(services.url + "/metrics", timeout=30).text
    assert "funnel_ingest_messages_accepted_total 1" in metrics
    assert 'funnel_ingest_messages_rejected_total{reason="validation"} 1' in metrics
    check = subprocess.run(["promtool", "check", "metrics"], input=metrics, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_processor_metrics_pass_promtool(services):
    res = services.http.post(services.url + "/v1/messages", json={
        "phone": "+6281234560001", "channel": "ads", "text": "info harga", "sent_at": "2026-11-20T10:00:00Z"}, timeout=30)
    assert res.status_code == 202, res.text

    def counted():
        text = requests.get(services.processor_url + "/metrics", timeout=5).text
        return text if re.search(r'^funnel_processor_stage_events_total\{stage="lead"\} 1$', text, re.M) else None

    metrics = wait_until("the processor to count the lead", counted)
    assert re.search(r"^funnel_processor_messages_consumed_total 1$", metrics, re.M), metrics
    check = subprocess.run(["promtool", "check", "metrics"], input=metrics, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert requests.get(services.processor_url + "/health/ready", timeout=5).status_code == 200
