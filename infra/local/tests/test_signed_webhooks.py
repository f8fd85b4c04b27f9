"""Signed webhooks for senders other than Meta (CRMs, websites, payment systems): Standard Webhooks
on POST /v1/messages and /v1/messages/batch instead of a bearer token. The signatures are made by
the reference `standardwebhooks` package from PyPI, a client nobody here wrote. Rotation (two
active secrets, one revoked) and replay protection (a webhook-id answered once is answered again
without producing again) included."""

import json
import subprocess
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests
from confluent_kafka import Consumer, TopicPartition
from standardwebhooks import Webhook

from conftest import env, wait_until

NOW = "2026-11-20T10:00:00+07:00"


def cli(s, *args):
    return subprocess.run([str(Path(env("FUNNEL_BIN")) / "funnel-ingest"), *args], env=s.ingest_env,
                          capture_output=True, text=True, check=True)


def ends(s):
    c = Consumer({"bootstrap.servers": s.brokers, "group.id": "signed-probe"})
    try:
        return sum(c.get_watermark_offsets(TopicPartition(s.topic, p), timeout=30)[1] for p in range(s.partitions))
    finally:
        c.close()


def signed_post(s, secret, path, payload, msg_id=None, at=None, signature=None):
    body = json.dumps(payload).encode()
    msg_id = msg_id or "msg_" + uuid.uuid4().hex
    at = at or datetime.now(tz=timezone.utc)
    headers = {"Content-Type": "application/json", "webhook-id": msg_id,
               "webhook-timestamp": str(int(at.timestamp())),
               "webhook-signature": signature or Webhook(secret).sign(msg_id, at, body)}
    return requests.post(s.url + path, data=body, headers=headers, timeout=30)


def message(phone, text):
    return {"phone": phone, "channel": "crm", "text": text, "sent_at": NOW}


def test_standard_webhooks_signatures_rotation_and_replay(services):
    s = services
    first = cli(s, "webhook-secret", "create", "--tenant", "acme", "--description", "crm").stdout.strip()
    assert first.startswith("whsec_"), first
    time.sleep(2.5)  # the service loads secrets every 2 s

    res = signed_post(s, first, "/v1/messages", message("+6281255507001", "info harga"), msg_id="msg_fixed_1")
    assert res.status_code == 202, res.text
    accepted = res.json()
    # The tenant came from the secret: the row is acme's, not the default tenant's.
    wait_until("acme's row", lambda: s.sql("SELECT tenant FROM funnel_contacts WHERE phone = '+6281255507001'")
               == "acme", timeout=60)

    # The same webhook-id again (the sender's retry): the same answer, nothing produced again.
    before = ends(s)
    again = signed_post(s, first, "/v1/messages", message("+6281255507001", "info harga"), msg_id="msg_fixed_1")
    assert again.status_code == 202 and again.json() == accepted, again.text
    assert again.headers.get("webhook-replayed") == "true"
    time.sleep(1)
    assert ends(s) == before

    # Refused: no valid signature, a timestamp out of the 5-minute tolerance (signed properly),
    # a secret nobody issued. Nothing is produced for any of them.
    assert signed_post(s, first, "/v1/messages", message("+6281255507002", "x"),
                       signature="v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").status_code == 401
    old = datetime.now(tz=timezone.utc) - timedelta(minutes=6)
    res = signed_post(s, first, "/v1/messages", message("+6281255507002", "x"), at=old)
    assert res.status_code == 401 and "too old" in res.json()["detail"], res.text
    stranger = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    assert signed_post(s, stranger, "/v1/messages", message("+6281255507002", "x")).status_code == 401
    time.sleep(1)
    assert ends(s) == before

    # Rotation: a second secret works alongside the first; once the first is revoked, only the
    # second does.
    second = cli(s, "webhook-secret", "create", "--tenant", "acme").stdout.strip()
    time.sleep(2.5)
    batch = {"messages": [message("+6281255507003", "info"), message("+6281255507004", "mau booking")]}
    res = signed_post(s, second, "/v1/messages/batch", batch)
    assert res.status_code == 202 and res.json()["accepted"] == 2, res.text
    first_id = next(line.split()[0] for line in cli(s, "webhook-secret", "list").stdout.splitlines()[1:]
                    if "crm" in line)
    cli(s, "webhook-secret", "revoke", first_id)
    wait_until("the revoked secret to be refused",
               lambda: signed_post(s, first, "/v1/messages", message("+6281255507005", "info")).status_code == 401,
               timeout=15)
    assert signed_post(s, second, "/v1/messages", message("+6281255507005", "info")).status_code == 202
    # A bearer token still works, and a bad token is not rescued by a signature header.
    assert s.http.post(s.url + "/v1/messages", json=message("+6281255507006", "info"), timeout=30).status_code == 202
    assert requests.post(s.url + "/v1/messages", json=message("+6281255507006", "info"), timeout=30,
                         headers={"Authorization": "Bearer nope", "webhook-signature": "v1,x"}).status_code == 401
