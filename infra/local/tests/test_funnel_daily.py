"""funnel_daily, the table the statement triggers on funnel_contacts keep up to date
(sql/20261127000001_analyst_surface.sql), checked against a computation in Python over the
contact rows after random upserts (the sink's statement shape), deletes, updates of unrelated
columns, concurrent writers, a time zone change and a truncate."""

import random
import subprocess
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from conftest import env, psql

PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]


@pytest.fixture
def db():
    base = env("DATABASE_URL")
    name = "daily_" + uuid.uuid4().hex[:10]
    psql(base, f"CREATE DATABASE {name}")
    url = base.rsplit("/", 1)[0] + "/" + name
    subprocess.run([str(Path(env("FUNNEL_BIN")) / "funnel-processor"), "migrate"], check=True,
                   capture_output=True, env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"})
    yield url
    psql(base, f"DROP DATABASE {name} WITH (FORCE)")


def ts(t):
    return "NULL" if t is None else f"'{t.isoformat()}'::timestamptz"


def upsert_sql(rows):
    """One statement like the sink's: INSERT .. ON CONFLICT (tenant, phone) DO UPDATE."""
    values = ",\n".join(
        f"('{r['tenant']}', '{r['phone']}', {ts(r['lead_at'])}, {'NULL' if r['channel'] is None else repr(r['channel'])}, "
        f"{ts(r['booking_at'])}, {ts(r['transaction_at'])}, {r['value']}, {r['count']}, 1)"
        for r in rows)
    return (f"INSERT INTO funnel_contacts (tenant, phone, lead_at, channel, booking_at, transaction_at, "
            f"transaction_value, transaction_count, message_count) VALUES {values} "
            "ON CONFLICT (tenant, phone) DO UPDATE SET lead_at = EXCLUDED.lead_at, channel = EXCLUDED.channel, "
            "booking_at = EXCLUDED.booking_at, transaction_at = EXCLUDED.transaction_at, "
            "transaction_value = EXCLUDED.transaction_value, transaction_count = EXCLUDED.transaction_count, "
            "message_count = funnel_contacts.message_count + 1;")


def random_rows(rng, tenants, n, phones=120, prefix="+62812"):
    start = datetime(2026, 11, 1, 12, tzinfo=timezone.utc)
    chosen = {}
    for _ in range(n):
        key = (rng.choice(tenants), f"{prefix}{rng.randrange(phones):06d}")

        def at():
            # Around 17:00 UTC, midnight in Jakarta, so the day depends on the zone.
            return start + timedelta(days=rng.randrange(4), hours=5 + rng.uniform(-1, 1))

        lead = at() if rng.random() < 0.7 else None
        count = rng.randrange(3) if rng.random() < 0.4 else 0
        chosen[key] = {
            "tenant": key[0], "phone": key[1], "lead_at": lead,
            "channel": rng.choice(["ads", "website", "direct"]) if lead else None,
            "booking_at": at() if rng.random() < 0.4 else None,
            "transaction_at": at() if count else None,
            "value": Decimal(rng.randrange(0, 500_000)) / 100 if count else Decimal("0"),
            "count": count,
        }
    return list(chosen.values())


def expected_daily(url):
    """funnel_daily computed here from the contact rows and the tenants' zones."""
    zones = dict(line.split("|") for line in psql(url, "SELECT tenant, time_zone FROM funnel_tenants").splitlines())
    out = defaultdict(lambda: [0, 0, 0, Decimal("0.00"), 0])
    rows = psql(url, "SELECT tenant, lead_at, channel, booking_at, transaction_at, transaction_value, "
                     "transaction_count FROM funnel_contacts")
    for line in rows.splitlines():
        tenant, lead, channel, booking, trx, value, count = line.split("|")
        parse = lambda s: datetime.fromisoformat(s) if s else None  # noqa: E731
        lead, booking, trx = parse(lead), parse(booking), parse(trx)
        at = lead or min([t for t in (booking, trx) if t], default=None)
        if at is None:
            continue
        day = at.astimezone(ZoneInfo(zones.get(tenant, "Asia/Jakarta"))).date().isoformat()
        row = out[(tenant, day, channel if lead else "")]
        row[0] += 1 if lead else 0
        row[1] += 1 if booking else 0
        row[2] += 1 if trx else 0
        row[3] += Decimal(value)
        row[4] += int(count)
    return {k: tuple(v) for k, v in out.items() if any(v)}


def actual_daily(url):
    rows = psql(url, "SELECT tenant, day, coalesce(channel, ''), leads, bookings, transactions, revenue, orders "
                     "FROM funnel_daily")
    out = {}
    for line in rows.splitlines():
        tenant, day, channel, leads, bookings, trx, revenue, orders = line.split("|")
        out[(tenant, day, channel)] = (int(leads), int(bookings), int(trx), Decimal(revenue), int(orders))
    return out


def assert_daily_matches(url, when):
    expected, actual = expected_daily(url), actual_daily(url)
    missing = {k: v for k, v in expected.items() if actual.get(k) != v}
    extra = {k: v for k, v in actual.items() if k not in expected}
    assert not missing and not extra, f"{when}: wrong or missing {missing}; unexpected {extra}"
    return len(actual)


def test_funnel_daily_follows_every_kind_of_write(db):
    rng = random.Random(20261124)
    psql(db, "INSERT INTO funnel_tenants (tenant, time_zone) VALUES ('acme', 'UTC')")
    tenants = ["default", "acme"]
    for i in range(25):
        psql(db, upsert_sql(random_rows(rng, tenants, 40)))
        if i % 6 == 5:
            psql(db, f"DELETE FROM funnel_contacts WHERE phone LIKE '%{rng.randrange(10)}'")
        if i % 8 == 7:
            psql(db, "UPDATE funnel_contacts SET message_count = message_count + 1, updated_at = now()")
    rows = assert_daily_matches(db, "after upserts and deletes")
    assert rows > 20, "the dataset should spread over several days and channels"
    assert psql(db, "SELECT count(*) FROM funnel_daily WHERE channel IS NULL") != "0", \
        "contacts without a lead should have rows of their own"

    before = actual_daily(db)
    psql(db, "UPDATE funnel_tenants SET time_zone = 'Asia/Tokyo' WHERE tenant = 'acme'")
    assert_daily_matches(db, "after acme moved to Asia/Tokyo")
    assert actual_daily(db) != before, "moving 17:00 UTC events from UTC to UTC+9 must move days"

    # Two writers at once over the same days, each with contacts of its own (like two
    # processors owning different partitions): each statement's daily upsert locks rows in key
    # order, so neither deadlocks nor loses an increment.
    scripts = []
    for w in range(2):
        wr = random.Random(w)
        stmts = [f"BEGIN; {upsert_sql(random_rows(wr, tenants, 30, phones=400, prefix=f'+62813{w}'))} COMMIT;" for _ in range(30)]
        scripts.append("\n".join(stmts))
    procs = [subprocess.Popen([str(PG_BIN / "psql"), db, "-v", "ON_ERROR_STOP=1", "-q"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in scripts]
    outs = [p.communicate(s, timeout=120) for p, s in zip(procs, scripts)]
    assert all(p.returncode == 0 for p in procs), outs
    assert_daily_matches(db, "after two concurrent writers")

    psql(db, "SELECT funnel_daily_rebuild(NULL)")
    assert_daily_matches(db, "after funnel_daily_rebuild")
    # TRUNCATE takes a table, not the public view on the live generation's (docs/replay.md).
    psql(db, "DO $$ BEGIN EXECUTE format('TRUNCATE %I.funnel_contacts', funnel_live_schema()); END $$")
    assert psql(db, "SELECT count(*) FROM funnel_daily") == "0"
