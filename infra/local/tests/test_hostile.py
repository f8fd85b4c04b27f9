"""A hostile client against a shared Funnel (issue 27): one tenant, or one careless integration,
must not starve, rewrite or crash another, and bad input must cost little. One test per finding;
each failed on the code before the fix."""

import csv
import io
import re
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import requests

from conftest import Services, env, wait_until

NOW = "2026-11-20T10:00:00Z"


def cli(services, *args, check=True):
    return subprocess.run([str(Path(env("FUNNEL_BIN")) / "funnel-ingest"), *args], env=services.env,
                          capture_output=True, text=True, check=check)


def token(services, tenant, scopes, *extra):
    out = cli(services, "token", "create", "--tenant", tenant, "--scope", scopes, *extra).stdout.strip()
    assert out.startswith("fnl_"), out
    return out


def session(tok):
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {tok}"
    return s


def message(phone, text, **extra):
    return {"phone": phone, "channel": "ads", "text": text, "sent_at": NOW, **extra}


def contact(services, tenant, phone):
    row = services.sql(f"SELECT coalesce(lead_at::text, '-'), coalesce(campaign, '-') FROM funnel_contacts "
                       f"WHERE tenant = '{tenant}' AND phone = '{phone}'")
    return row.split("|") if row else None


# 1. Per-tenant limits --------------------------------------------------------------------------

def test_a_tenant_over_its_limits_gets_429_and_others_do_not(services):
    other = session(token(services, "acme", "ingest,read"))
    out = cli(services, "tenant", "limits", "--tenant", "default", "--messages-per-second", "2",
              "--burst", "4", "--reads-per-second", "2").stdout
    assert "messages_per_second=2 burst=4 reads_per_second=2" in out, out
    url = services.url + "/v1/messages/batch"
    # Applied by the running service within 5 s, without a restart: a batch over the burst is
    # refused for good (413), one within it passes.
    batch = {"messages": [message(f"+62812555000{i}", "halo") for i in range(5)]}
    wait_until("the stored limits to apply",
               lambda: services.http.post(url, json=batch, timeout=30).status_code == 413, timeout=10)
    time.sleep(2.5)  # the bucket refills
    res = services.http.post(url, json={"messages": batch["messages"][:4]}, timeout=30)
    assert res.status_code == 202, res.text
    res = services.http.post(services.url + "/v1/messages", json=message("+6281255500009", "halo"), timeout=30)
    assert res.status_code == 429, res.text
    assert res.headers["content-type"].startswith("application/problem+json")
    assert int(res.headers["retry-after"]) >= 1
    assert res.json()["type"].endswith("/rate-limited") and "2 messages per second" in res.json()["detail"]
    # Reads have their own limit.
    codes = [services.http.get(services.url + "/v1/rules", timeout=30).status_code for _ in range(4)]
    assert 429 in codes and codes[0] == 200, codes
    # Another tenant is not touched.
    assert other.post(services.url + "/v1/messages", json=message("+6281255500010", "halo"),
                      timeout=30).status_code == 202
    assert [other.get(services.url + "/v1/rules", timeout=30).status_code for _ in range(4)] == [200] * 4
    # Back to the defaults.
    assert "cleared" in cli(services, "tenant", "limits", "--tenant", "default", "--clear").stdout
    wait_until("the defaults to apply",
               lambda: services.http.post(url, json=batch, timeout=30).status_code == 202, timeout=10)
    bad = cli(services, "tenant", "limits", "--tenant", "Not A Tenant", "--burst", "1", check=False)
    assert bad.returncode != 0 and "expected 1..64 of a-z" in bad.stderr


# 2. Token checks cost no database round trip once seen --------------------------------------

def token_lookups(services):
    return int(services.sql("SELECT coalesce(idx_scan, 0) + coalesce(seq_scan, 0) FROM pg_stat_user_tables "
                            "WHERE relname = 'funnel_api_tokens'"))


def test_unknown_tokens_cost_no_query_once_seen(services):
    unknown = "fnl_" + "ab" * 32
    time.sleep(11)  # idle backends report their table statistics within 10 s
    before = token_lookups(services)
    for i in range(40):
        # Malformed tokens are never looked up; a well-formed unknown one once.
        for tok in (f"nonsense-{i}", unknown):
            res = requests.get(services.url + "/v1/rules", headers={"Authorization": f"Bearer {tok}"}, timeout=30)
            assert res.status_code == 401, res.text
        if i == 20:
            time.sleep(6)  # past the valid tokens' recheck interval
    time.sleep(11)
    assert token_lookups(services) - before <= 1


def stalled_export(services):
    """A CSV export whose client reads its status line and then nothing more, with a small
    receive buffer (the kernel would otherwise buffer tens of megabytes for it)."""
    u = urlparse(services.url)
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.settimeout(30)
    c.connect((u.hostname, u.port))
    c.sendall(f"GET /v1/contacts.csv HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {services.token}\r\n\r\n"
              .encode())
    status = c.recv(64)[:12].decode()
    return c, status


def test_slow_exporters_hold_no_database_connection(services):
    # About 90 MB of CSV: more than the socket buffers between PostgreSQL and the client hold.
    services.sql("""
        INSERT INTO funnel_contacts (tenant, phone, lead_at, channel, campaign, transaction_value,
                                     first_message_at, last_message_at, message_count)
        SELECT 'default', '+62811' || lpad(i::text, 8, '0'), timestamptz '2026-10-01', 'ads',
               'kampanye ' || repeat('x', 150), 0, timestamptz '2026-10-01', timestamptz '2026-10-02', 1
          FROM generate_series(1, 400000) AS i""")
    # A dozen stalled exports: more than the pool's 8 connections. Before, each kept its
    # connection: the ninth export and every read after it waited out the pool's acquire
    # timeout and got 503.
    stalled = [stalled_export(services) for _ in range(12)]
    try:
        assert [status for _, status in stalled] == ["HTTP/1.1 200"] * 12
        time.sleep(1)
        res = services.http.get(services.url + "/v1/contacts", params={"limit": 1}, timeout=30)
        assert res.status_code == 200, res.text
        # A token never seen before needs a lookup: it does not wait behind the exports either.
        fresh = session(token(services, "default", "read"))
        assert fresh.get(services.url + "/v1/rules", timeout=30).status_code == 200
    finally:
        for c, _ in stalled:
            c.close()


def test_the_server_caps_connections_and_times_out_slow_clients(tmp_path, monkeypatch):
    monkeypatch.setenv("FUNNEL_HTTP_MAX_CONNECTIONS", "4")
    monkeypatch.setenv("FUNNEL_HTTP_BODY_TIMEOUT_MS", "1000")
    monkeypatch.setenv("FUNNEL_HTTP_IDLE_TIMEOUT_MS", "3000")
    s = Services(tmp_path, processor=False)
    try:
        u = urlparse(s.url)

        def connect():
            c = socket.create_connection((u.hostname, u.port), timeout=10)
            return c
        # A body that trickles in: 408 once the body deadline passes, not a held connection.
        c = connect()
        c.sendall(f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {s.token}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"phone\"".encode())
        assert c.recv(4096).decode(errors="replace").startswith("HTTP/1.1 408")
        c.close()
        # A connection that sends nothing is closed after the idle timeout.
        c = connect()
        assert c.recv(4096) == b"", "an idle connection was kept"
        c.close()
        # Four connections held open: a fifth waits in the accept queue until one closes.
        held = [connect() for _ in range(4)]
        time.sleep(0.5)
        try:
            requests.get(s.url + "/health/live", timeout=1)
            raise AssertionError("a fifth connection was served past the cap of 4")
        except requests.exceptions.Timeout:
            pass
        for c in held:
            c.close()
        assert requests.get(s.url + "/health/live", timeout=10).ok
    finally:
        s.stop()


def test_the_token_is_checked_before_the_body_is_read(services):
    # A request announcing a 1 MB body and sending none: without the token check first, the
    # service would wait for the body.
    u = urlparse(services.url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(b"POST /v1/messages/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer fnl_nope\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n")
        s.settimeout(5)
        head = s.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 401"), head


# 3. Tenants' rules are their own ---------------------------------------------------------------

def test_the_default_tenant_cannot_rewrite_another_tenants_funnel(services):
    default_admin = session(token(services, "default", "read,admin"))
    acme = session(token(services, "acme", "ingest,read"))
    res = default_admin.put(services.url + "/v1/rules",
                            json=[{"stage": "lead", "pattern": "zzqx"}], timeout=30)
    assert res.status_code == 201, res.text
    default_version = res.json()["version"]
    # acme has stored no rules: it gets the built-in starter set, never default's.
    body = acme.get(services.url + "/v1/rules", timeout=30).json()
    assert body["tenant"] == "_builtin" and body["inherited"] is True, body
    assert body["created_by"] == "migration"
    assert "zzqx" not in str(body["rules"]) and body["version"] != default_version
    time.sleep(3)  # the processors' rule poll (2 s)
    for phone, text in (("+6281255501001", "zzqx"), ("+6281255501002", "info harga")):
        assert acme.post(services.url + "/v1/messages", json=message(phone, text),
                         timeout=30).status_code == 202
    wait_until("acme's second contact", lambda: contact(services, "acme", "+6281255501002"))
    assert contact(services, "acme", "+6281255501002")[0] != "-", "the starter set makes a lead of 'info'"
    wait_until("acme's first contact", lambda: contact(services, "acme", "+6281255501001"))
    assert contact(services, "acme", "+6281255501001")[0] == "-", "default's rule classified acme's message"


# 4. Every field bounded, checked before work --------------------------------------------------

def test_every_field_is_bounded_and_every_invalid_field_named(services):
    url = services.url + "/v1/messages"
    res = services.http.post(url, json=message("0" * 200_000, "halo"), timeout=30)
    assert res.status_code == 422, res.text
    assert res.json()["errors"][0]["pointer"] == "/phone" and len(res.text) < 2000
    for field, value in (("campaign", "c" * 257), ("source", "s" * 257), ("conversation_id", "v" * 257),
                         ("metadata", {"k": "v" * 1025}), ("metadata", {"k" * 65: "v"})):
        res = services.http.post(url, json=message("+6281255502001", "halo", **{field: value}), timeout=30)
        assert res.status_code == 422, (field, res.text)
        assert res.json()["errors"][0]["pointer"].startswith("/" + field), res.text
    # A missing field does not hide the others.
    res = services.http.post(url, json={"phone": "123", "channel": "no spaces", "sent_at": "yesterday"}, timeout=30)
    assert res.status_code == 422
    assert {e["pointer"] for e in res.json()["errors"]} == {"/text", "/phone", "/channel", "/sent_at"}
    # A record past the broker's message size is the item's error, not a 503 for the batch.
    res = services.http.post(url + "/batch", json={"messages": [
        message("+6281255502002", "halo", campaign="x" * 2_000_000),
        message("+6281255502003", "halo"),
    ]}, timeout=60)
    assert res.status_code == 202, res.text[:500]
    results = res.json()["results"]
    assert results[0]["status"] == "rejected" and results[0]["errors"][0]["pointer"] == "/campaign"
    assert results[1]["status"] == "accepted"


# 5. Rule sets bounded -------------------------------------------------------------------------

def test_rule_sets_past_the_compile_bounds_are_refused(services):
    admin = session(token(services, "default", "read,admin"))
    url = services.url + "/v1/rules"
    many = [{"stage": "lead", "match": "regex", "pattern": f"x{i}"} for i in range(201)]
    res = admin.put(url, json=many, timeout=60)
    assert res.status_code == 422, res.text[:300]
    assert "at most 200" in res.text
    # Each regex small enough alone (a Unicode \w is about 49 KiB compiled), too large together.
    heavy = "stage,match,pattern,channel,direction,priority\n" + "".join(
        f"lead,regex,\\w{{4}}{i},,,0\n" for i in range(200))
    res = admin.put(url, data=heavy.encode(), headers={"Content-Type": "text/csv"}, timeout=60)
    assert res.status_code == 422, res.text[:300]
    assert "together" in res.text and res.json()["errors"][0]["pointer"] == ""
    huge = "stage,match,pattern,channel,direction,priority\nlead,regex," + "a" * 1001 + ",,,0\n"
    res = admin.put(url, data=huge.encode(), headers={"Content-Type": "text/csv"}, timeout=60)
    assert res.status_code == 422 and res.json()["errors"][0]["pointer"] == "/lines/2", res.text[:300]
    # Nothing was stored: the tenant still has the first set.
    assert admin.get(url, timeout=30).json()["version"] == 1


# 6. CSV injection ------------------------------------------------------------------------------

def test_csv_exports_neutralize_formulas(services):
    formula = '=HYPERLINK("http://evil.example","click")'
    admin = session(token(services, "default", "read,admin"))
    res = services.http.post(services.url + "/v1/messages",
                             json=message("+6281255503001", "info harga", campaign=formula), timeout=30)
    assert res.status_code == 202, res.text
    wait_until("the contact", lambda: contact(services, "default", "+6281255503001"))
    rows = list(csv.DictReader(io.StringIO(services.http.get(services.url + "/v1/contacts.csv", timeout=30).text)))
    row = next(r for r in rows if r["phone"] == "+6281255503001")
    assert row["campaign"] == "'" + formula, row
    report = services.http.get(services.url + "/v1/reports/funnel.csv",
                               params={"group_by": "campaign", "from": "2026-11-01", "to": "2026-11-30"}, timeout=30)
    assert "'" + formula.replace('"', '""') in report.text, report.text
    assert "\n=" not in report.text and ",=" not in report.text
    # Rules: a formula pattern is written neutralized and reads back as itself.
    res = admin.put(services.url + "/v1/rules", json=[{"stage": "lead", "match": "contains", "pattern": "=cmd"}],
                    timeout=30)
    assert res.status_code == 201, res.text
    text = admin.get(services.url + "/v1/rules.csv", timeout=30).text
    assert ",'=cmd," in text, text
    again = admin.put(services.url + "/v1/rules", data=text.encode(), headers={"Content-Type": "text/csv"}, timeout=30)
    assert again.status_code == 200 and again.json()["created"] is False, again.text


# 7. No personal data in logs -------------------------------------------------------------------

def test_logs_hold_no_phone_and_no_forged_client_address(services):
    services.http.get(services.url + "/v1/contacts/+6281255504001", headers={"X-Forwarded-For": "6.6.6.6"},
                      timeout=30)
    for i in range(3):
        res = services.http.post(services.url + "/v1/messages", json=message(f"+628125550400{i}", "halo"), timeout=30)
        assert res.status_code == 202, res.text
    wait_until("the contacts", lambda: services.sql("SELECT count(*) FROM funnel_contacts") == "3")
    page = services.http.get(services.url + "/v1/contacts", params={"limit": 1}, timeout=30).json()
    time.sleep(0.5)
    log = (services.logs / "ingest.log").read_text()
    assert "/v1/contacts/{phone}" in log, log[-2000:]
    assert "81255504" not in log, "a phone in the log"
    assert "6.6.6.6" not in log, "a client-supplied X-Forwarded-For in the log"
    # Paging cursors reveal no contact key (they were the hex of `col|at|phone`).
    cursor = page.get("next_cursor")
    assert cursor, page
    try:
        decoded = bytes.fromhex(cursor).decode(errors="ignore")
    except ValueError:
        decoded = ""
    assert "+62" not in decoded and "81255504" not in cursor, cursor
    again = services.http.get(services.url + "/v1/contacts", params={"limit": 1, "cursor": cursor}, timeout=30)
    assert again.status_code == 200 and again.json()["contacts"], again.text
    forged = services.http.get(services.url + "/v1/contacts", params={"cursor": cursor[:-4] + ("AAAA" if cursor[-4:] != "AAAA" else "BBBB")}, timeout=30)
    assert forged.status_code == 422, forged.text


# 10. Tokens: expiry and last use --------------------------------------------------------------

def test_tokens_expire_and_list_their_last_use(services):
    made = cli(services, "token", "create", "--tenant", "default", "--scope", "read", "--expires-in", "4s")
    tok, token_id = made.stdout.strip(), made.stderr.split()[1]
    assert token_id.startswith("tok_"), made.stderr
    assert session(tok).get(services.url + "/v1/rules", timeout=30).status_code == 200

    def listed():
        line = next(l for l in cli(services, "token", "list").stdout.splitlines() if l.startswith(token_id))
        # created, last used and expires: three times once the use is recorded ("-" before).
        return line if line.count("UTC") == 3 else None
    wait_until("the token's last use to be recorded", listed, timeout=10)
    time.sleep(4.5)
    assert session(tok).get(services.url + "/v1/rules", timeout=30).status_code == 401
    line = next(l for l in cli(services, "token", "list").stdout.splitlines() if l.startswith(token_id))
    assert "expired" in line, line
