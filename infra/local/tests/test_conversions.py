"""Conversions back to Meta (issue 28): a contact a click-to-WhatsApp ad brought gets exactly one
LeadSubmitted and one Purchase per transaction at a fake Graph API (Meta's servers are not
reachable from here), with the value, currency, click id and a stable event id; also when the
Graph API answers 500 first, and when the processor is killed between enqueue and send; a
refusal parks the conversion until `conversions retry`; and a replay sends nothing again."""

import hashlib
import hmac
import http.server
import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from conftest import Processors, Services, env, wait_until

PHONE_NUMBER_ID = "106540352242977"
WABA_ID = "102290129340377"
DATASET = "8675309000111"
APP_SECRET = "conversions-app-secret"
TOKEN = "EAAB-test-access-token"


class FakeGraph:
    """Meta's Graph API as far as the Conversions API goes: POST /<dataset>/events. Records every
    request; answers 500 to the first `fail_first`, and 400 (code 100) while `refuse` is set."""

    def __init__(self, fail_first=0):
        self.requests, self.fail_first, self.refuse = [], fail_first, False
        graph = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                u = urlparse(self.path)
                seen = {"path": u.path, "token": parse_qs(u.query).get("access_token", [None])[0],
                        "auth": self.headers.get("Authorization"), "body": body}
                graph.requests.append(seen)
                if len(graph.requests) <= graph.fail_first:
                    status, answer = 500, {"error": {"message": "An unknown error occurred", "code": 1}}
                elif graph.refuse:
                    status, answer = 400, {"error": {"message": "Invalid parameter", "type": "OAuthException",
                                                     "code": 100, "error_subcode": 2804066}}
                else:
                    status, answer = 200, {"events_received": 1, "fbtrace_id": "A1"}
                seen["status"] = status
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v21.0"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accepted(self):
        """The events Meta took (answered 200)."""
        return [r["body"]["data"][0] for r in self.requests if r["status"] == 200]

    def close(self):
        self.server.shutdown()


def cli(s, binary, *args, check=True):
    return subprocess.run([str(Path(env("FUNNEL_BIN")) / binary), *args],
                          env=s.ingest_env if binary == "funnel-ingest" else s.env,
                          capture_output=True, text=True, check=check, timeout=300)


def webhook(s, url, messages):
    body = ('{"object":"whatsapp_business_account","entry":[{"id":"%s","changes":[{"value":{"messaging_product":'
            '"whatsapp","metadata":{"display_phone_number":"15550783881","phone_number_id":"%s"},"messages":[%s]},'
            '"field":"messages"}]}]}' % (WABA_ID, PHONE_NUMBER_ID, ",".join(messages))).encode()
    sig = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    res = requests.post(url, data=body, headers={"Content-Type": "application/json", "X-Hub-Signature-256": sig},
                        timeout=30)
    assert res.status_code == 200, res.text
    return res.json()


def text(frm, wamid, at, body, referral=None):
    ref = ''
    if referral:
        ref = (',"referral":{"source_url":"https:\\/\\/fb.me\\/ad","source_id":"1202263058548","source_type":"ad",'
               '"headline":"Promo","ctwa_clid":"%s"}' % referral)
    return ('{"from":"%s","id":"%s","timestamp":"%d","type":"text","text":{"body":"%s"}%s}'
            % (frm, wamid, at, body, ref))


@pytest.fixture
def setup(tmp_path):
    graph = FakeGraph(fail_first=1)
    s = Services(tmp_path, processor=False)
    (tmp_path / "secret").write_text(APP_SECRET)
    (tmp_path / "token").write_text(TOKEN + "\n")
    ch = json.loads(cli(s, "funnel-ingest", "channel", "add", "whatsapp", "--tenant", "default",
                        "--phone-number-id", PHONE_NUMBER_ID, "--app-secret-file", str(tmp_path / "secret"),
                        "--verify-token", "verify-token-1", "--waba-id", WABA_ID, "--dataset-id", DATASET,
                        "--access-token-file", str(tmp_path / "token")).stdout)
    assert ch["conversions"] is True, ch
    url = s.url + ch["webhook_path"]
    wait_until("the channel", lambda: requests.get(url, timeout=5).status_code != 404, timeout=15)
    procs = Processors(s, tmp_path, FUNNEL_META_GRAPH_URL=graph.url, FUNNEL_CONVERSIONS_RETRY_BASE_MS="300",
                       FUNNEL_CONVERSIONS_POLL_MS="200", FUNNEL_CONVERSIONS_LEASE_MS="4000")
    yield s, url, graph, procs
    procs.stop_all()
    s.stop()
    graph.close()


def listed(s, state=None):
    args = ["conversions", "list", "--json"] + (["--state", state] if state else [])
    return [json.loads(line) for line in cli(s, "funnel-processor", *args).stdout.splitlines()]


def test_each_conversion_reaches_meta_once_and_a_replay_sends_nothing_again(setup):
    s, url, graph, procs = setup
    procs.start()
    now = int(time.time())
    clid = "ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4XvnO2E4"
    webhook(s, url, [text("6281234560001", "wamid.c1", now - 3600, "info harga paket", referral=clid),
                     # An organic contact: a lead and a payment, no ad, so nothing for Meta.
                     text("6281234560002", "wamid.o1", now - 3500, "info dong"),
                     text("6281234560002", "wamid.o2", now - 3400, "sudah transfer Rp 200.000")])
    webhook(s, url, [text("6281234560001", "wamid.c2", now - 1800, "sudah transfer Rp 1.500.000 ya kak"),
                     text("6281234560001", "wamid.c3", now - 600, "pelunasan Rp 500rb lunas")])
    wait_until("three conversions at the Graph API", lambda: len(graph.accepted()) >= 3, timeout=90)
    time.sleep(2)
    events = graph.accepted()
    assert len(events) == 3, events
    assert graph.requests[0]["status"] == 500, "the first answer was a 500: retried"
    assert len(graph.requests) == 4, [r["status"] for r in graph.requests]
    by_name = {}
    for e in events:
        by_name.setdefault(e["event_name"], []).append(e)
    assert sorted(by_name) == ["LeadSubmitted", "Purchase"] and len(by_name["LeadSubmitted"]) == 1
    assert sorted(e["custom_data"]["value"] for e in by_name["Purchase"]) == [500000.0, 1500000.0]
    for e in events:
        assert e["action_source"] == "business_messaging" and e["messaging_channel"] == "whatsapp", e
        assert e["user_data"] == {"whatsapp_business_account_id": WABA_ID, "ctwa_clid": clid}, e
        assert abs(e["event_time"] - now) < 4000, e
    assert all(e["custom_data"]["currency"] == "IDR" for e in by_name["Purchase"])
    assert len({e["event_id"] for e in events}) == 3
    # The retried request carried the same event id as its first attempt.
    assert graph.requests[0]["body"]["data"][0]["event_id"] in {e["event_id"] for e in events}
    assert {r["path"] for r in graph.requests} == {f"/v21.0/{DATASET}/events"}
    assert {(r["token"], r["auth"]) for r in graph.requests} == {(TOKEN, f"Bearer {TOKEN}")}
    assert sorted(c["state"] for c in listed(s)) == ["sent"] * 3
    metric = procs.metric(procs.started[0], 'funnel_processor_conversions_total{outcome="retried"}')
    assert metric == 1.0, metric

    # A replay re-reads every message into a new generation and switches to it: Meta hears
    # nothing more.
    out = cli(s, "funnel-processor", "replay", "--from", "earliest")
    assert "switched" in out.stdout, out.stdout + out.stderr
    webhook(s, url, [text("6281234560001", "wamid.c4", now - 60, "terima kasih kak")])
    wait_until("the message after the switch", lambda: s.sql(
        "SELECT message_count FROM funnel_contacts WHERE phone = '+6281234560001'") == "4", timeout=60)
    time.sleep(3)
    assert len(graph.accepted()) == 3, graph.accepted()[3:]


def test_killed_between_enqueue_and_send_and_parked_refusals(setup):
    s, url, graph, procs = setup
    graph.fail_first = 0
    # Dies right before its first send: the conversion is enqueued (committed with its stage
    # event) and not sent.
    p = procs.start(failpoints="conversions-before-send=return")
    now = int(time.time())
    webhook(s, url, [text("6281234560011", "wamid.k1", now - 600, "info harga", referral="clid-kill")])
    assert p.wait(120) == -signal.SIGABRT, procs.logs()
    assert graph.requests == []
    assert [c["state"] for c in listed(s)] == ["pending"]
    # Restarted: sent once (the lease of the dead sender runs out first).
    procs.start()
    wait_until("the conversion", lambda: graph.accepted(), timeout=90)
    time.sleep(2)
    assert [e["event_name"] for e in graph.accepted()] == ["LeadSubmitted"]

    # Meta refuses a conversion: parked with the reason, not retried, until retried by hand.
    graph.refuse = True
    webhook(s, url, [text("6281234560011", "wamid.k2", now - 300, "sudah transfer Rp 75.000")])
    wait_until("the parked conversion", lambda: listed(s, "parked"), timeout=60)
    parked = listed(s, "parked")[0]
    assert "HTTP 400: Invalid parameter (code 100)" in parked["last_error"], parked
    tries = len(graph.requests)
    time.sleep(2)
    assert len(graph.requests) == tries, "a parked conversion is not retried by itself"
    graph.refuse = False
    assert "1 parked" in cli(s, "funnel-processor", "conversions", "retry").stdout
    wait_until("the retried purchase", lambda: any(e["event_name"] == "Purchase" for e in graph.accepted()),
               timeout=60)
    purchase = next(e for e in graph.accepted() if e["event_name"] == "Purchase")
    assert purchase["custom_data"] == {"currency": "IDR", "value": 75000.0}
    assert purchase["event_id"] == parked["conversion_id"]
