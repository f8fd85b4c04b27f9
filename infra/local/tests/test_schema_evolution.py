"""The chat message schema only changes BACKWARD-compatibly, and the registry is the judge: every
published version (schemas/history/chat_message.<n>.avsc) and then the current one register, in
order, under one subject with the BACKWARD rule, as funnel-ingest registers them on start. A change
that would break reading old records (a new field without a default) is refused."""

import json
import uuid

import requests

from conftest import ROOT, env

HEADERS = {"Content-Type": "application/vnd.schemaregistry.v1+json"}


def register(url, subject, schema):
    return requests.post(f"{url}/subjects/{subject}/versions", json={"schema": schema, "schemaType": "AVRO"},
                         headers=HEADERS, timeout=30)


def test_every_schema_version_is_backward_compatible_with_the_ones_before():
    url = env("FUNNEL_SCHEMA_REGISTRY_URL")
    subject = f"evolution-{uuid.uuid4().hex[:10]}.chat-messages-value"
    res = requests.put(f"{url}/config/{subject}", json={"compatibility": "BACKWARD"}, headers=HEADERS, timeout=30)
    assert res.ok, res.text
    history = sorted((ROOT / "schemas/history").glob("chat_message.*.avsc"), key=lambda p: int(p.name.split(".")[1]))
    assert history, "schemas/history holds the published versions"
    versions = [p.read_text() for p in history] + [(ROOT / "schemas/chat_message.avsc").read_text()]
    assert json.loads(versions[-1]) != json.loads(versions[-2]), \
        "the last published version is schemas/chat_message.avsc itself: history holds the earlier ones only"
    ids = []
    for text in versions:
        res = register(url, subject, text)
        assert res.status_code == 200, res.text
        ids.append(res.json()["id"])
    assert len(set(ids)) == len(versions), ids
    # A new field without a default cannot be read from old records: refused.
    broken = json.loads(versions[-1])
    broken["fields"].append({"name": "required_later", "type": "string"})
    res = register(url, subject, json.dumps(broken))
    assert res.status_code == 409, (res.status_code, res.text)
