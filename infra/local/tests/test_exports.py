"""GET /v1/contacts.csv streams: exporting many more bytes than the service may hold does not
raise its peak memory by the size of the export, every row arrives once, and a client that
disconnects early leaves the service answering."""

import csv
import io

import pytest
import requests

from conftest import Services

ROWS = 300_000


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    s = Services(tmp_path_factory.mktemp("exports"), processor=False)
    # Contacts written straight into the table (the fold is tested elsewhere): every fifth
    # without a lead, the others spread over a month of leads with long campaign names, so the
    # CSV is well over the memory bound asserted below.
    s.sql(f"""
        INSERT INTO funnel_contacts (tenant, phone, lead_at, channel, campaign, booking_at,
                                     transaction_value, first_message_at, last_message_at, message_count)
        SELECT 'default', '+62811' || lpad(i::text, 8, '0'),
               CASE WHEN i % 5 <> 0 THEN timestamptz '2026-10-01' + (i % 30) * interval '1 day' + i * interval '1 ms' END,
               'ads', 'kampanye "akhir tahun", gelombang ' || (i % 97) || repeat('x', 60),
               CASE WHEN i % 3 = 0 THEN timestamptz '2026-10-20' END,
               0, timestamptz '2026-10-01', timestamptz '2026-10-02', 1
          FROM generate_series(1, {ROWS}) AS i""")
    yield s
    s.stop()


def peak_rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def test_a_large_export_streams_in_bounded_memory(services):
    pid = services.procs[0].pid
    # Warm the path once on a small export, so allocations every request needs are counted
    # in the baseline.
    small = services.http.get(services.url + "/v1/contacts.csv", params={"channel": "none"}, timeout=30)
    assert small.status_code == 200 and small.text.count("\n") == 1, small.text[:300]
    before = peak_rss_kib(pid)
    res = services.http.get(services.url + "/v1/contacts.csv", stream=True, timeout=300)
    assert res.status_code == 200
    assert res.headers["content-type"].startswith("text/csv")
    assert "attachment" in res.headers["content-disposition"]
    size = 0
    chunks = []
    for chunk in res.iter_content(chunk_size=1 << 20):
        size += len(chunk)
        chunks.append(chunk)
    after = peak_rss_kib(pid)
    rows = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    assert len(rows) == ROWS, len(rows)
    assert len({r["phone"] for r in rows}) == ROWS, "a row arrived twice"
    assert [r["phone"] for r in rows] == sorted(r["phone"] for r in rows), "not in phone order"
    assert rows[0]["campaign"].startswith('kampanye "akhir tahun", gelombang'), rows[0]
    assert size > 60 * 1024 * 1024, f"the export should be far larger than the bound: {size} bytes"
    grown_mib = (after - before) / 1024
    assert grown_mib < 24, f"peak RSS grew by {grown_mib:.1f} MiB while streaming {size / 2**20:.0f} MiB"


def test_a_client_leaving_mid_export_does_not_hurt_the_service(services):
    res = services.http.get(services.url + "/v1/contacts.csv", stream=True, timeout=60)
    first = next(res.iter_content(chunk_size=64 * 1024))
    assert first.startswith(b"phone,stage,lead_at")
    res.close()
    # The producer task notices the closed body and stops; the service still answers, and a
    # filtered export is complete and correct.
    leads = services.http.get(services.url + "/v1/contacts.csv",
                              params={"stage": "booking", "from": "2026-10-01", "to": "2026-10-31", "tz": "UTC"},
                              timeout=60)
    assert leads.status_code == 200
    rows = list(csv.DictReader(io.StringIO(leads.text)))
    expected = sum(1 for i in range(1, ROWS + 1) if i % 3 == 0)
    assert len(rows) == expected, (len(rows), expected)
    assert requests.get(services.url + "/health/live", timeout=5).ok
