"""Meta's WhatsApp Cloud API webhook against the real stack (issue 28): payloads written the way
Meta writes them (non-ASCII as \\uXXXX, emoji as surrogate pairs, `/` as `\\/`), signed with the
app secret over those exact bytes, several messages and a status in one payload, a click-to-
WhatsApp referral, an echo from the WhatsApp Business app, a business-scoped user id without a
phone and its alias, a wrong and a tampered signature, a redelivery. The rows are the
contract's."""

import hashlib
import hmac
import json
import subprocess
import time
from pathlib import Path

import pytest
import requests
from confluent_kafka import Consumer, TopicPartition

from conftest import Services, env, wait_until

PHONE_NUMBER_ID = "106540352242922"
WABA_ID = "102290129340398"
APP_SECRET = "meta-app-secret-0123456789"
VERIFY_TOKEN = "verify-token-for-tests"
T0 = 1795000000  # 2026-11-18T06:26:40Z, seconds (Meta sends strings of seconds)


def cli(s, *args):
    return subprocess.run([str(Path(env("FUNNEL_BIN")) / "funnel-ingest"), *args], env=s.ingest_env,
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture
def wa(tmp_path):
    s = Services(tmp_path)
    secret = tmp_path / "app-secret"
    secret.write_text(APP_SECRET + "\n")
    out = cli(s, "channel", "add", "whatsapp", "--tenant", "default", "--phone-number-id", PHONE_NUMBER_ID,
              "--app-secret-file", str(secret), "--verify-token", VERIFY_TOKEN, "--waba-id", WABA_ID)
    ch = json.loads(out)
    assert ch["webhook_path"] == f"/v1/channels/whatsapp/{ch['channel_id']}/webhook", ch
    s.webhook = s.url + ch["webhook_path"]
    s.channel_id = ch["channel_id"]
    # The running service loads channels every 2 s.
    wait_until("the channel to be served",
               lambda: requests.get(s.webhook, timeout=5).status_code != 404, timeout=15)
    yield s
    s.stop()


def sign(body: bytes, secret=APP_SECRET):
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post(s, body: bytes, signature=None):
    return requests.post(s.webhook, data=body, timeout=30, headers={
        "Content-Type": "application/json",
        "X-Hub-Signature-256": signature if signature is not None else sign(body)})


def change(field, value):
    return '{"value":%s,"field":"%s"}' % (value, field)


def payload(*changes):
    """The envelope, as Meta's serializer writes it (no spaces)."""
    return ('{"object":"whatsapp_business_account","entry":[{"id":"%s","changes":[%s]}]}'
            % (WABA_ID, ",".join(changes))).encode()


def value(messages="", statuses="", contacts="", phone_number_id=PHONE_NUMBER_ID, key="messages"):
    parts = ['"messaging_product":"whatsapp"',
             '"metadata":{"display_phone_number":"15550783881","phone_number_id":"%s"}' % phone_number_id]
    if contacts:
        parts.append('"contacts":[%s]' % contacts)
    if messages:
        parts.append('"%s":[%s]' % (key, messages))
    if statuses:
        parts.append('"statuses":[%s]' % statuses)
    return "{" + ",".join(parts) + "}"


def ends(s):
    c = Consumer({"bootstrap.servers": s.brokers, "group.id": "wa-probe"})
    try:
        return sum(c.get_watermark_offsets(TopicPartition(s.topic, p), timeout=30)[1] for p in range(s.partitions))
    finally:
        c.close()


def row(s, key, cols="channel, message_count, ad_source_id, ad_headline, ctwa_clid, lead_at IS NOT NULL"):
    out = s.sql(f"SELECT {cols} FROM funnel_contacts WHERE tenant = 'default' AND phone = '{key}'")
    return out.split("|") if out else None


# A contact from a click-to-WhatsApp ad: phone and business-scoped user id, the referral, emoji
# and accents escaped the way Meta escapes them, URLs with \/.
CTWA = ('{"from":"6281234567001","from_user_id":"ID.13491208655302741001","id":"wamid.HBgLNjI4MTIzNDU2NzAwMRUCABIYFDNBMDAx",'
        '"timestamp":"%d","type":"text","text":{"body":"Halo kak, info harga caf\\u00e9 \\ud83d\\ude00 dong"},'
        '"referral":{"source_url":"https:\\/\\/fb.me\\/3cr4Wqqkv","source_id":"120226305854810726","source_type":"ad",'
        '"body":"Paket hemat \\u2014 diskon 20%%","headline":"Chat kami sekarang","media_type":"image",'
        '"image_url":"https:\\/\\/scontent.xx.fbcdn.net\\/v\\/t45.1","ctwa_clid":"Aff-n8ZTODiE79d22KtAwQKj9e_mIEOOj27vDVw",'
        '"welcome_message":{"text":"Hai! Ada yang bisa kami bantu?"}}}') % T0
BUTTON = ('{"context":{"from":"15550783881","id":"wamid.biz1"},"from":"6281234567001","id":"wamid.button1",'
          '"timestamp":"%d","type":"interactive","interactive":{"type":"button_reply","button_reply":'
          '{"id":"book","title":"Mau booking"}}}') % (T0 + 60)
STATUS = ('{"id":"wamid.out1","status":"delivered","timestamp":"%d","recipient_id":"6281234567001",'
          '"pricing":{"billable":true,"pricing_model":"PMP","type":"regular","category":"service"}}') % (T0 + 5)
CONTACT_A = '{"profile":{"name":"Sit\\u00ec"},"wa_id":"6281234567001","user_id":"ID.13491208655302741001"}'


def test_the_verify_handshake(wa):
    ok = requests.get(wa.webhook, params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN,
                                          "hub.challenge": "1158201444"}, timeout=10)
    assert ok.status_code == 200 and ok.text == "1158201444", (ok.status_code, ok.text)
    wrong = requests.get(wa.webhook, params={"hub.mode": "subscribe", "hub.verify_token": "nope",
                                             "hub.challenge": "1"}, timeout=10)
    assert wrong.status_code == 403
    unknown = requests.get(wa.url + "/v1/channels/whatsapp/ch_unknown/webhook",
                           params={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
                           timeout=10)
    assert unknown.status_code == 404


def test_payloads_as_meta_sends_them_become_the_contracts_rows(wa):
    echo = ('{"from":"15550783881","to":"6281234567001","id":"wamid.echo1","timestamp":"%d","type":"text",'
            '"text":{"body":"Pembayaran Rp 1.500.000 sudah lunas ya kak, terima kasih"}}') % (T0 + 120)
    other_number = value(messages='{"from":"6281299999999","id":"wamid.other","timestamp":"%d","type":"text",'
                                  '"text":{"body":"info"}}' % T0, phone_number_id="999")
    body = payload(change("messages", value(messages=",".join([CTWA, BUTTON]), statuses=STATUS, contacts=CONTACT_A)),
                   change("smb_message_echoes", value(messages=echo, key="message_echoes")),
                   change("messages", other_number))
    assert b"\\u00e9" in body and b"\\/" in body and b"\\ud83d" in body, "written as Meta writes"
    res = post(wa, body)
    assert res.status_code == 200, res.text
    assert res.json() == {"messages": 3, "statuses": 1, "ignored": 1, "unusable": 0}, res.json()
    wait_until("the contact's row", lambda: (row(wa, "+6281234567001") or [None, "0"])[1] == "3", timeout=60)
    channel, count, ad, headline, clid, lead = row(wa, "+6281234567001")
    assert (channel, count, ad, headline, clid, lead) == (
        "ctwa", "3", "120226305854810726", "Chat kami sekarang", "Aff-n8ZTODiE79d22KtAwQKj9e_mIEOOj27vDVw", "t")
    assert row(wa, "+6281234567001", "ad_source_url, ad_source_type, ad_at")[:2] == ["https://fb.me/3cr4Wqqkv", "ad"]
    # The echo (the agent's reply from the app, outbound) confirms a payment: its value.
    events = wa.sql("SELECT stage || ':' || value || ':' || event_id FROM funnel_stage_events ORDER BY stage")
    assert "transaction:1500000.00:wamid.echo1" in events.splitlines(), events
    assert wa.sql("SELECT count(*) FROM funnel_contacts WHERE phone = '+6281299999999'") == "0"
    # Through the contacts API and the ad report, with the headline.
    c = wa.http.get(wa.url + "/v1/contacts/+6281234567001", timeout=30).json()
    assert (c["ad_source_id"], c["ad_headline"], c["ctwa_clid"]) == (
        "120226305854810726", "Chat kami sekarang", "Aff-n8ZTODiE79d22KtAwQKj9e_mIEOOj27vDVw"), c
    report = wa.http.get(wa.url + "/v1/reports/funnel", params={"group_by": "ad", "from": "2026-11-01",
                                                                  "to": "2026-11-30"}, timeout=30).json()
    groups = [(r["group"], r["headline"], r["leads"]) for r in report["rows"] if r["kind"] == "group"]
    assert groups == [("120226305854810726", "Chat kami sekarang", 1)], report["rows"]

    # A redelivery (Meta retries for days) is one event per message.
    before = ends(wa)
    assert post(wa, body).status_code == 200
    time.sleep(3)
    assert ends(wa) == before + 3, "a redelivery is produced again"
    assert row(wa, "+6281234567001")[1] == "3", "and folded once"


def test_wrong_and_tampered_signatures_produce_nothing(wa):
    body = payload(change("messages", value(messages=CTWA, contacts=CONTACT_A)))
    before = ends(wa)
    assert post(wa, body, signature="sha256=" + "0" * 64).status_code == 401
    assert post(wa, body, signature="").status_code == 401
    assert post(wa, body, signature=sign(body, secret="another app's secret")).status_code == 401
    tampered = body.replace(b"Chat kami sekarang", b"Chat kami sekaranG")
    res = post(wa, tampered, signature=sign(body))
    assert res.status_code == 401 and res.headers["content-type"].startswith("application/problem+json")
    # The same JSON, parsed and written again (escapes undone): the signature no longer fits.
    rewritten = json.dumps(json.loads(body), ensure_ascii=False, separators=(",", ":")).encode()
    assert rewritten != body
    assert post(wa, rewritten, signature=sign(body)).status_code == 401
    time.sleep(1)
    assert ends(wa) == before, "nothing was produced"
    assert post(wa, b"x" * (5 * 1024 * 1024), signature=sign(b"x")).status_code == 413


def test_a_user_id_without_a_phone_has_a_funnel_and_later_messages_join_the_phone(wa):
    user = "ID.13491208655302749999"
    only_user = ('{"from_user_id":"%s","id":"wamid.u1","timestamp":"%d","type":"text","text":{"body":"info promo"}}'
                 % (user, T0))
    contact = '{"profile":{"name":"Rina","username":"@rina"},"user_id":"%s"}' % user
    assert post(wa, payload(change("messages", value(messages=only_user, contacts=contact)))).status_code == 200
    wait_until("the user id's row", lambda: row(wa, user), timeout=60)
    assert row(wa, user)[1] == "1"
    # A message with both: the user id becomes an alias of the phone.
    both = ('{"from":"6281234567999","from_user_id":"%s","id":"wamid.u2","timestamp":"%d","type":"text",'
            '"text":{"body":"mau booking"}}' % (user, T0 + 60))
    contact_both = '{"profile":{"name":"Rina"},"wa_id":"6281234567999","user_id":"%s"}' % user
    assert post(wa, payload(change("messages", value(messages=both, contacts=contact_both)))).status_code == 200
    # Later messages with only the user id land on the phone's key.
    later = ('{"from_user_id":"%s","id":"wamid.u3","timestamp":"%d","type":"image","image":{"caption":"sudah transfer '
             'Rp 350rb","mime_type":"image\\/jpeg","id":"77"}}' % (user, T0 + 120))
    assert post(wa, payload(change("messages", value(messages=later, contacts=contact)))).status_code == 200
    wait_until("both messages on the phone's row",
               lambda: (row(wa, "+6281234567999") or [None, "0"])[1] == "2", timeout=60)
    assert row(wa, "+6281234567999", "transaction_value, booking_at IS NOT NULL") == ["350000.00", "t"]
    assert row(wa, user)[1] == "1", "the user id's own history stays on its row"
    assert wa.sql(f"SELECT phone FROM funnel_contact_aliases WHERE business_user_id = '{user}'") == "+6281234567999"
