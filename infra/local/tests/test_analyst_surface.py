"""The analyst surface end to end: GET /v1/reports/funnel(.csv), GET /v1/contacts(/{phone})(.csv)
and the funnel_daily table, against an oracle computed here, in Python, from the messages this
file generates. The oracle never reads funnel_contacts nor repeats the service's SQL: it folds
the generated messages itself (each message's stages and value are known by construction, since
the generator writes the text for them) and computes cohorts, windows, percentiles and buckets
with zoneinfo and decimal.

One seeded dataset (~300 contacts, ~1500 messages over Oct 30 .. Nov 23 2026) is sent once per
module through POST /v1/messages/batch to services of its own (topic and database); the tests
then only read. Lead times cluster around 17:00 UTC (midnight in Asia/Jakarta) so that days,
weeks and months differ between time zones."""

import csv
import io
import json
import math
import random
import time
from bisect import bisect_right
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest
from confluent_kafka import Consumer, TopicPartition

from conftest import Services, wait_until

UTC = timezone.utc
JAKARTA = "Asia/Jakarta"
SEED = 20261124
CHANNELS = ["ads", "website", "direct", "campaign_blast", "ig-dm"]
CHANNEL_WEIGHTS = [5, 4, 3, 2, 1]
# Campaign texts that CSV must quote: commas, double quotes, a newline, non-ASCII.
TRICKY_CAMPAIGNS = ["Diskon, 50% Nov", 'Kata "gratis" kak', "baris satu\nbaris dua", "Liburan café ☕ Jakarta",
                    'mix, "all"\nof it']
CAMPAIGNS = [None, "promo_nov", "retarget-q4", *TRICKY_CAMPAIGNS]
CAMPAIGN_WEIGHTS = [4, 4, 2, 2, 2, 2, 2, 1]
FIRST_DAY = datetime(2026, 10, 30, tzinfo=UTC)
LEAD_DAYS = 24  # lead days Oct 30 .. Nov 22 (UTC)
LAST_SENT = datetime(2026, 11, 23, 23, 0, tzinfo=UTC)  # nothing later: sent_at <= now + 24 h
WINDOW_EDGE = 7  # the window the boundary contacts are built for

REPORT_COLUMNS = ["kind", "group", "leads", "bookings", "transactions", "revenue", "orders", "average_order_value",
                  "lead_to_booking_rate", "booking_to_transaction_rate", "lead_to_transaction_rate",
                  "median_hours_lead_to_booking", "p90_hours_lead_to_booking", "median_hours_lead_to_transaction",
                  "p90_hours_lead_to_transaction", "headline"]
INT_FIELDS = ["leads", "bookings", "transactions", "orders"]
STR_FIELDS = ["revenue", "average_order_value"]
FLOAT_FIELDS = ["lead_to_booking_rate", "booking_to_transaction_rate", "lead_to_transaction_rate",
                "median_hours_lead_to_booking", "p90_hours_lead_to_booking", "median_hours_lead_to_transaction",
                "p90_hours_lead_to_transaction"]
CONTACT_COLUMNS = ["phone", "stage", "lead_at", "channel", "campaign", "booking_at", "transaction_at",
                   "transaction_value", "transaction_count", "first_message_at", "last_message_at",
                   "message_count", "rule_set_version", "updated_at", "ad_at", "ad_source_id", "ad_source_type",
                   "ad_source_url", "ad_headline", "ctwa_clid"]
CONTACT_TIMES = ["lead_at", "booking_at", "transaction_at", "first_message_at", "last_message_at", "updated_at",
                 "ad_at"]

LEAD_TEXTS = ["info dong kak", "boleh minta info?", "Info paketnya kak", "mau info ya"]
BOOKING_TEXTS = ["mau booking ya kak", "booking untuk sabtu", "saya booking sekarang"]
FILLER_TEXTS = ["halo", "terima kasih", "ok kak", "siap", "selamat pagi"]
OUTBOUND_TEXTS = ["halo kak, ada yang bisa dibantu?", "baik kak, ditunggu ya"]


# ---------------------------------------------------------------------------------------------
# The generator
# ---------------------------------------------------------------------------------------------

def rfc3339(t):
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_ts(s):
    """An RFC 3339 timestamp (any offset, optional fraction) as an aware datetime."""
    return datetime.fromisoformat(s.replace("Z", "+00:00")) if s is not None else None


def money(rng):
    """A transaction amount: (text, value)."""
    kind = rng.random()
    if kind < 0.45:
        n = rng.randrange(50, 5000) * 1000
        return f"Rp {n:,}".replace(",", "."), Decimal(n)
    if kind < 0.6:
        n = rng.randrange(50, 3000) * 1000 + rng.choice([0, 500])
        return f"Rp{n:,}".replace(",", "."), Decimal(n)
    if kind < 0.9:
        k = rng.randrange(50, 1000)
        return f"{k}rb", Decimal(k * 1000)
    if kind < 0.95:
        return "Rp 1.250.000", Decimal(1250000)
    return "", Decimal(0)  # no amount: value 0, the event still counts


class Generator:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.used_times = set()
        self.used_phones = set()
        self.messages = []  # distinct messages: {"payload", "stages", "value", "at", "e164"}
        self.kinds = {}     # e164 -> kind of contact

    def at(self, t):
        """A timestamp no other message has (whole seconds), so orders by time have no ties."""
        t = t.replace(microsecond=0)
        while t in self.used_times:
            t += timedelta(seconds=1)
        self.used_times.add(t)
        return t

    def phone(self):
        while True:
            p = "+62812" + "".join(self.rng.choice("0123456789") for _ in range(8))
            if p not in self.used_phones and p != UNKNOWN_PHONE:
                self.used_phones.add(p)
                return p

    def lead_time(self):
        rng = self.rng
        day = FIRST_DAY + timedelta(days=rng.randrange(LEAD_DAYS))
        if rng.random() < 0.75:  # around 17:00 UTC = midnight in Jakarta
            offset = max(-4 * 3600, min(4 * 3600, rng.gauss(0, 50 * 60)))
            return day + timedelta(hours=17, seconds=offset)
        return day + timedelta(seconds=rng.randrange(86400))

    def add(self, e164, t, stages, text, value=Decimal(0), channel=None, campaign=None, direction="inbound",
            exact=False):
        """One message of contact e164 at about t; dropped when later than LAST_SENT."""
        if t > LAST_SENT:
            return None
        rng = self.rng
        t = t if exact else self.at(t)
        if exact:
            self.used_times.add(t)
        channel = channel or rng.choices(CHANNELS, CHANNEL_WEIGHTS)[0]
        if campaign is None and "lead" not in stages and rng.random() < 0.3:
            campaign = rng.choice(CAMPAIGNS[1:])  # campaigns on other messages must not matter
        n = sum(1 for m in self.messages if m["e164"] == e164)
        payload = {"event_id": f"as-{e164[1:]}-{n:02d}", "phone": self.phone_form(e164), "channel": channel,
                   "direction": direction, "text": text, "sent_at": rfc3339(t)}
        if campaign is not None:
            payload["campaign"] = campaign
        if rng.random() < 0.1:
            payload["conversation_id"] = f"conv-{e164[-4:]}"
        m = {"payload": payload, "stages": frozenset(stages), "value": value, "at": t, "e164": e164}
        self.messages.append(m)
        return m

    def phone_form(self, e164):
        """Phones arrive in several forms; all normalize to the same contact."""
        r = self.rng.random()
        national = "0" + e164[3:]
        if r < 0.8:
            return e164
        if r < 0.9:
            return f"{national[:4]}-{national[4:8]}-{national[8:]}"
        return f"+62 {e164[3:6]}-{e164[6:10]}-{e164[10:]}"

    def lead(self, e164, t, channel=None, campaign="pick"):
        rng = self.rng
        if campaign == "pick":
            campaign = rng.choices(CAMPAIGNS, CAMPAIGN_WEIGHTS)[0]
        text = rng.choice(LEAD_TEXTS)
        m = self.add(e164, t, {"lead"}, text, channel=channel, campaign=campaign)
        if m is not None and campaign is None:
            m["payload"].pop("campaign", None)
        return m

    def booking(self, e164, t):
        return self.add(e164, t, {"booking"}, self.rng.choice(BOOKING_TEXTS))

    def transaction(self, e164, t, exact=False, amount=None):
        rng = self.rng
        text_amount, value = amount if amount else money(rng)
        if text_amount:
            text = rng.choice([f"sudah transfer {text_amount}", f"kak sudah transfer {text_amount} ya",
                               f"Sudah transfer {text_amount}"])
        else:
            text = "kak sudah transfer ya"
        return self.add(e164, t, {"transaction"}, text, value=value, exact=exact)

    def fillers(self, e164, around, n):
        rng = self.rng
        for _ in range(n):
            t = around + timedelta(hours=rng.uniform(-30, 60))
            if rng.random() < 0.3:
                self.add(e164, t, set(), rng.choice(OUTBOUND_TEXTS), direction="outbound")
            else:
                self.add(e164, t, set(), rng.choice(FILLER_TEXTS))

    def contact(self, kind):
        rng = self.rng
        e164 = self.phone()
        self.kinds[e164] = kind
        lead_at = self.lead_time()
        if kind == "message_only":
            self.fillers(e164, lead_at, rng.randrange(1, 4))
            return
        if kind == "no_lead":
            first = lead_at
            if rng.random() < 0.7:
                self.booking(e164, first)
                first += timedelta(hours=rng.expovariate(1 / 30))
            for _ in range(rng.choice([0, 1, 1, 2]) if self.kinds_has_booking(e164) else rng.choice([1, 2])):
                self.transaction(e164, first)
                first += timedelta(hours=rng.uniform(1, 50))
            self.fillers(e164, lead_at, rng.randrange(0, 3))
            return
        if kind == "booking_first":
            self.booking(e164, lead_at - timedelta(hours=rng.uniform(0.5, 72)))
        if kind == "trx_first":
            self.transaction(e164, lead_at - timedelta(hours=rng.uniform(0.5, 100)))
        # The lead, sometimes a later second lead on another channel and campaign (the earliest wins).
        if rng.random() < 0.06:
            self.add(e164, lead_at, {"lead", "booking"}, rng.choice(["info booking dong", "mau info dan booking"]),
                     campaign=rng.choices(CAMPAIGNS, CAMPAIGN_WEIGHTS)[0])
            booked = True
        else:
            self.lead(e164, lead_at)
            booked = kind == "booking_first"
        if rng.random() < 0.3:
            self.lead(e164, lead_at + timedelta(hours=rng.uniform(0.1, 80)))
        self.fillers(e164, lead_at, rng.randrange(1, 6))
        t = lead_at
        if not booked and rng.random() < 0.55:
            t = lead_at + timedelta(hours=rng.expovariate(1 / 40))
            if rng.random() < 0.1:
                text_amount, value = money(rng)
                self.add(e164, t, {"booking", "transaction"},
                         f"booking dan sudah transfer {text_amount}".strip(), value=value)
                return
            self.booking(e164, t)
            if rng.random() < 0.2:
                self.booking(e164, t + timedelta(hours=rng.uniform(1, 40)))  # a later booking: not the one
            booked = True
        if booked and rng.random() < 0.6 or not booked and rng.random() < 0.08 or kind == "trx_first":
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                t = t + timedelta(hours=rng.expovariate(1 / 30))
                self.transaction(e164, t)

    def kinds_has_booking(self, e164):
        return any(m["e164"] == e164 and "booking" in m["stages"] for m in self.messages)

    def boundary_contacts(self):
        """Contacts whose conversions fall exactly on, or one second past, lead + WINDOW_EDGE days."""
        w = timedelta(days=WINDOW_EDGE)
        a = self.phone()
        self.kinds[a] = "window_edge"
        lead = datetime(2026, 11, 5, 17, 30, 11, tzinfo=UTC)
        self.add(a, lead, {"lead"}, "info dong", channel="ads", campaign="promo_nov", exact=True)
        self.add(a, lead + w, {"booking"}, "mau booking ya kak", exact=True)
        self.transaction(a, lead + w, exact=True, amount=("Rp 100.000", Decimal(100000)))
        self.transaction(a, lead + w + timedelta(seconds=1), exact=True, amount=("Rp 50.000", Decimal(50000)))
        b = self.phone()
        self.kinds[b] = "window_edge"
        lead = datetime(2026, 11, 6, 16, 59, 59, tzinfo=UTC)
        self.add(b, lead, {"lead"}, "info dong", channel="website", exact=True)
        self.add(b, lead + w + timedelta(seconds=1), {"booking"}, "booking untuk sabtu", exact=True)
        self.transaction(b, lead + timedelta(days=2), amount=("350rb", Decimal(350000)))

    def generate(self, contacts=300):
        self.boundary_contacts()
        kinds = (["funnel"] * 70 + ["booking_first"] * 8 + ["trx_first"] * 4 + ["no_lead"] * 10
                 + ["message_only"] * 8)
        for _ in range(contacts - 2):
            self.contact(self.rng.choice(kinds))
        return self


def send_plan(gen):
    """The payloads to POST, in batches: every distinct message once, in random order, plus
    duplicates of some (same event id, same content) in the same batch and in a later one."""
    rng = random.Random(SEED + 1)
    payloads = [m["payload"] for m in gen.messages]
    rng.shuffle(payloads)
    dup_same = rng.sample(payloads[:900], 25)
    first = payloads[:900] + [dict(p) for p in dup_same]
    rng.shuffle(first)
    second = payloads[900:]
    dup_later = rng.sample(payloads[:900], 40) + rng.sample(payloads[900:], 10)
    third = [dict(p) for p in dup_later]
    return [first, second, third]


# ---------------------------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------------------------

def fold(sent_batches, gen):
    """Contacts as the contract's fold defines them, from the messages sent (deduplicated by
    event id). Stages and values come from the generator's intent, not from parsing texts."""
    meta = {m["payload"]["event_id"]: m for m in gen.messages}
    seen = set()
    contacts = {}
    for batch in sent_batches:
        for p in batch:
            if p["event_id"] in seen:
                continue
            seen.add(p["event_id"])
            m = meta[p["event_id"]]
            c = contacts.setdefault(m["e164"], {
                "phone": m["e164"], "lead": None, "booking_at": None, "transaction_at": None, "tx": {},
                "first_message_at": None, "last_message_at": None, "message_count": 0, "classified": False})
            t = m["at"]
            c["message_count"] += 1
            c["first_message_at"] = min(filter(None, [c["first_message_at"], t]))
            c["last_message_at"] = max(filter(None, [c["last_message_at"], t]))
            if m["stages"]:
                c["classified"] = True
            if "lead" in m["stages"]:
                key = (t, p["event_id"])
                if c["lead"] is None or key < c["lead"][0]:
                    c["lead"] = (key, p["channel"], p.get("campaign"))
            if "booking" in m["stages"]:
                c["booking_at"] = min(filter(None, [c["booking_at"], t]))
            if "transaction" in m["stages"]:
                c["transaction_at"] = min(filter(None, [c["transaction_at"], t]))
                c["tx"][p["event_id"]] = (t, m["value"])
    out = {}
    for phone, c in contacts.items():
        lead = c.pop("lead")
        c["lead_at"] = lead[0][0] if lead else None
        c["channel"] = lead[1] if lead else None
        c["campaign"] = lead[2] if lead else None
        c["transaction_value"] = sum((v for _, v in c["tx"].values()), Decimal(0))
        c["transaction_count"] = len(c["tx"])
        c["stage"] = ("transaction" if c["transaction_at"] else "booking" if c["booking_at"]
                      else "lead" if c["lead_at"] else None)
        c["rule_set_version"] = 1 if c.pop("classified") else None
        out[phone] = c
    return out


def money_str(d):
    return str(d.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def percentile_cont(values, p):
    if not values:
        return None
    s = sorted(values)
    pos = p * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def ratio(a, b):
    return a / b if b else None


def day_start(d, tz):
    return datetime(d.year, d.month, d.day, tzinfo=tz).astimezone(UTC)


def hour_starts(start, end, tz):
    """Every instant in [start, end) at which the local clock in tz shows hh:00:00."""
    starts, t = [], start
    while t < end:
        if t.astimezone(tz).minute == 0 and t.astimezone(tz).second == 0:
            starts.append(t)
        t += timedelta(minutes=15)
    return starts


def buckets(group_by, d_from, d_to, tz):
    """[(label, key)] of a time grouping, every bucket from `from` to `to`, ascending."""
    if group_by == "hour":
        return [(t.astimezone(tz).isoformat(), t) for t in hour_starts(day_start(d_from, tz),
                                                                          day_start(d_to + timedelta(days=1), tz), tz)]
    keys, d = [], d_from
    while d <= d_to:
        k = {"day": d, "week": d - timedelta(days=d.weekday()), "month": d.replace(day=1)}[group_by]
        if k not in keys:
            keys.append(k)
        d += timedelta(days=1)
    return [(k.isoformat(), k) for k in keys]


def group_key(c, group_by, tz, hours=None):
    if group_by == "channel":
        return c["channel"]
    if group_by == "campaign":
        return c["campaign"]
    if group_by == "hour":
        return hours[bisect_right(hours, c["lead_at"]) - 1]
    d = c["lead_at"].astimezone(tz).date()
    return {"day": d, "week": d - timedelta(days=d.weekday()), "month": d.replace(day=1)}[group_by]


def cohort_row(kind, label, members, window):
    lim = timedelta(days=window) if window is not None else None

    def within(c, t):
        return t is not None and (lim is None or t <= c["lead_at"] + lim)

    booked = [c for c in members if within(c, c["booking_at"])]
    paid = [c for c in members if within(c, c["transaction_at"])]
    revenue, orders = Decimal(0), 0
    for c in members:
        for t, v in c["tx"].values():
            if lim is None or t <= c["lead_at"] + lim:
                revenue += v
                orders += 1
    hb = [(c["booking_at"] - c["lead_at"]).total_seconds() / 3600 for c in booked]
    ht = [(c["transaction_at"] - c["lead_at"]).total_seconds() / 3600 for c in paid]
    leads = len(members)
    return {"kind": kind, "group": label, "leads": leads, "bookings": len(booked), "transactions": len(paid),
            "revenue": money_str(revenue), "orders": orders,
            "average_order_value": money_str(revenue / orders) if orders else None,
            "lead_to_booking_rate": ratio(len(booked), leads),
            "booking_to_transaction_rate": ratio(len(paid), len(booked)),
            "lead_to_transaction_rate": ratio(len(paid), leads),
            "median_hours_lead_to_booking": percentile_cont(hb, 0.5),
            "p90_hours_lead_to_booking": percentile_cont(hb, 0.9),
            "median_hours_lead_to_transaction": percentile_cont(ht, 0.5),
            "p90_hours_lead_to_transaction": percentile_cont(ht, 0.9)}


def expected_report(contacts, group_by="day", tz=JAKARTA, d_from=None, d_to=None, window=None):
    zone = ZoneInfo(tz)
    start, end = day_start(d_from, zone), day_start(d_to + timedelta(days=1), zone)
    cohort = [c for c in contacts.values() if c["lead_at"] is not None and start <= c["lead_at"] < end]
    rows = []
    if group_by in ("channel", "campaign"):
        groups = defaultdict(list)
        for c in cohort:
            groups[group_key(c, group_by, zone)].append(c)
        order = sorted(groups, key=lambda g: (-len(groups[g]), g is None, g or ""))
        rows += [cohort_row("group", g, groups[g], window) for g in order]
    else:
        bks = buckets(group_by, d_from, d_to, zone)
        hours = [k for _, k in bks] if group_by == "hour" else None
        groups = defaultdict(list)
        for c in cohort:
            groups[group_key(c, group_by, zone, hours)].append(c)
        assert set(groups) <= {k for _, k in bks}, "oracle: a cohort contact outside every bucket"
        rows += [cohort_row("group", label, groups.get(k, []), window) for label, k in bks]
    no_lead = [c for c in contacts.values() if c["lead_at"] is None
               and (c["booking_at"] or c["transaction_at"])
               and start <= min(filter(None, [c["booking_at"], c["transaction_at"]])) < end]
    revenue = sum((c["transaction_value"] for c in no_lead), Decimal(0))
    orders = sum(c["transaction_count"] for c in no_lead)
    rows.append({"kind": "no_lead", "group": None, "leads": 0,
                 "bookings": sum(1 for c in no_lead if c["booking_at"]),
                 "transactions": sum(1 for c in no_lead if c["transaction_at"]),
                 "revenue": money_str(revenue), "orders": orders,
                 "average_order_value": money_str(revenue / orders) if orders else None,
                 **{f: None for f in FLOAT_FIELDS}})
    rows.append(cohort_row("total", None, cohort, window))
    return {"group_by": group_by, "tz": tz, "from": d_from.isoformat(), "to": d_to.isoformat(),
            "window_days": window, "rows": rows}


def expected_daily(contacts, tz=JAKARTA):
    zone = ZoneInfo(tz)
    rows = defaultdict(lambda: {"leads": 0, "bookings": 0, "transactions": 0, "revenue": Decimal(0), "orders": 0})
    for c in contacts.values():
        if c["lead_at"] is not None:
            r = rows[(c["lead_at"].astimezone(zone).date().isoformat(), c["channel"])]
            r["leads"] += 1
        elif c["booking_at"] or c["transaction_at"]:
            first = min(filter(None, [c["booking_at"], c["transaction_at"]]))
            r = rows[(first.astimezone(zone).date().isoformat(), None)]
        else:
            continue
        r["bookings"] += c["booking_at"] is not None
        r["transactions"] += c["transaction_at"] is not None
        r["revenue"] += c["transaction_value"]
        r["orders"] += c["transaction_count"]
    return dict(rows)


def contact_view(c):
    """The oracle's contact as GET /v1/contacts/{phone} should show it (times as datetimes)."""
    return {"phone": c["phone"], "stage": c["stage"], "lead_at": c["lead_at"], "channel": c["channel"],
            "campaign": c["campaign"], "booking_at": c["booking_at"], "transaction_at": c["transaction_at"],
            "transaction_value": money_str(c["transaction_value"]), "transaction_count": c["transaction_count"],
            "first_message_at": c["first_message_at"], "last_message_at": c["last_message_at"],
            "message_count": c["message_count"], "rule_set_version": c["rule_set_version"]}


# ---------------------------------------------------------------------------------------------
# Comparison helpers
# ---------------------------------------------------------------------------------------------

def close(a, b):
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def report_diffs(expected, got):
    diffs = []
    for k in ("group_by", "tz", "from", "to", "window_days"):
        if got.get(k) != expected[k]:
            diffs.append(f"{k}: expected {expected[k]!r}, got {got.get(k)!r}")
    er, gr = expected["rows"], got.get("rows", [])
    eg = [(r["kind"], r["group"]) for r in er]
    gg = [(r.get("kind"), r.get("group")) for r in gr]
    if eg != gg:
        diffs.append(f"rows (kind, group): expected {len(eg)} rows {eg[:8]}...{eg[-3:]}, "
                     f"got {len(gg)} rows {gg[:8]}...{gg[-3:]}")
        missing = [x for x in eg if x not in gg]
        extra = [x for x in gg if x not in eg]
        diffs.append(f"  missing {missing[:10]}, unexpected {extra[:10]}")
        return diffs
    for e, g in zip(er, gr):
        where = f"row {e['kind']} {e['group']!r}"
        for f in INT_FIELDS + STR_FIELDS:
            if g.get(f) != e[f]:
                diffs.append(f"{where} {f}: expected {e[f]!r}, got {g.get(f)!r}")
        for f in FLOAT_FIELDS:
            ev, gv = e[f], g.get(f)
            if (ev is None) != (gv is None) or ev is not None and not (
                    isinstance(gv, (int, float)) and close(ev, gv)):
                diffs.append(f"{where} {f}: expected {ev!r}, got {gv!r}")
    return diffs


def params_of(group_by, tz, d_from, d_to, window):
    p = {"group_by": group_by, "from": d_from.isoformat(), "to": d_to.isoformat()}
    if tz is not None:
        p["tz"] = tz
    if window is not None:
        p["window_days"] = str(window)
    return p


def contact_diffs(expected, got):
    diffs = []
    for k, ev in expected.items():
        gv = got.get(k, "<absent>")
        if k in CONTACT_TIMES:
            try:
                gv = parse_ts(gv)
            except (TypeError, ValueError):
                diffs.append(f"{k}: not an RFC 3339 timestamp: {got.get(k)!r}")
                continue
        if gv != ev:
            diffs.append(f"{k}: expected {ev!r}, got {got.get(k, '<absent>')!r}")
    return diffs


def normalize_contact(row):
    """A contact row (JSON, or CSV with '' for null) in comparable form."""
    out = {}
    for k in CONTACT_COLUMNS:
        v = row.get(k)
        if v == "":
            v = None
        if v is not None and k in CONTACT_TIMES:
            v = parse_ts(v)
        elif v is not None and k in ("transaction_count", "message_count", "rule_set_version"):
            v = int(v)
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------

UNKNOWN_PHONE = "+6281299990000"


def topic_ends(services):
    consumer = Consumer({"bootstrap.servers": services.brokers, "group.id": services.name + "-ends"})
    try:
        return {p: consumer.get_watermark_offsets(TopicPartition(services.topic, p), timeout=30)[1]
                for p in range(services.partitions)}
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(services, contacts oracle, generator) with the dataset sent and fully processed."""
    gen = Generator(SEED).generate()
    batches = send_plan(gen)
    contacts = fold(batches, gen)
    services = Services(tmp_path_factory.mktemp("analyst"))
    try:
        started = time.monotonic()
        for batch in batches:
            assert len(batch) <= 1000
            res = services.http.post(services.url + "/v1/messages/batch", json={"messages": batch}, timeout=120)
            assert res.status_code == 202, res.text[:2000]
            results = res.json()["results"]
            assert len(results) == len(batch)
            bad = [(p, r) for p, r in zip(batch, results) if r.get("status") != "accepted"
                   or r.get("event_id") != p["event_id"]]
            assert not bad, f"{len(bad)} items not accepted, e.g. {bad[:3]}"
        ends = topic_ends(services)
        assert sum(ends.values()) >= sum(map(len, batches))

        def caught_up():
            rows = services.sql(f"SELECT partition, next_offset FROM funnel_sink_offsets "
                                f"WHERE consumer_group = '{services.name}' AND topic = '{services.topic}'")
            done = {int(p): int(o) for p, o in (line.split("|") for line in rows.splitlines() if line)}
            return all(done.get(p, 0) >= end for p, end in ends.items())
        wait_until("the processor to reach the end of the topic", caught_up, timeout=120)
        n = int(services.sql("SELECT count(*) FROM funnel_contacts"))
        assert n == len(contacts), f"funnel_contacts has {n} rows, the dataset {len(contacts)} contacts"
        print(f"\n{sum(map(len, batches))} messages ({len(gen.messages)} distinct) of {len(contacts)} contacts "
              f"sent and processed in {time.monotonic() - started:.1f} s")
        yield services, contacts, gen
    finally:
        services.stop()


def get(services, path, params=None, **kw):
    return services.http.get(services.url + path, params=params, timeout=60, **kw)


# ---------------------------------------------------------------------------------------------
# The dataset itself (pure Python: the generator makes the cases the tests rely on)
# ---------------------------------------------------------------------------------------------

def test_dataset_has_the_cases_the_tests_need():
    gen = Generator(SEED).generate()
    batches = send_plan(gen)
    contacts = fold(batches, gen)
    sent = sum(map(len, batches))
    assert 250 <= len(contacts) <= 350 and 1200 <= len(gen.messages) <= 1800, (len(contacts), len(gen.messages))
    assert sent - len(gen.messages) >= 50, "duplicate sends"
    cs = list(contacts.values())
    jkt = ZoneInfo(JAKARTA)
    moved = [c for c in cs if c["lead_at"] and c["lead_at"].astimezone(jkt).date() != c["lead_at"].date()]
    assert len(moved) >= 30, "leads on another day in Jakarta than in UTC"
    assert sum(1 for c in cs if c["lead_at"] and c["booking_at"] and c["booking_at"] < c["lead_at"]) >= 5
    assert sum(1 for c in cs if c["lead_at"] and c["transaction_at"] and c["transaction_at"] < c["lead_at"]) >= 3
    assert sum(1 for c in cs if c["lead_at"] is None and (c["booking_at"] or c["transaction_at"])) >= 10
    assert sum(1 for c in cs if c["stage"] is None) >= 5, "message-only contacts"
    assert {c["campaign"] for c in cs if c["lead_at"]} >= set(CAMPAIGNS)
    assert sum(1 for c in cs if c["transaction_count"] >= 2) >= 10
    assert any(v == 0 for c in cs for _, v in c["tx"].values()), "a transaction without an amount"
    # A later lead on another channel never wins.
    assert sum(1 for m in gen.messages if "lead" in m["stages"]) > sum(1 for c in cs if c["lead_at"])
    assert all(m["at"] <= LAST_SENT for m in gen.messages)
    assert all(len(b) <= 1000 for b in batches)
    # percentile_cont as PostgreSQL defines it.
    assert percentile_cont([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert math.isclose(percentile_cont([1.0, 2.0, 3.0, 4.0], 0.9), 3.7)
    assert percentile_cont([5.0], 0.9) == 5.0
    assert money_str(Decimal("1000000") / 3) == "333333.33" and money_str(Decimal("0.125")) == "0.13"
    # Hour buckets of a 2-day range, in a whole-hour, a half-hour and a DST-changing zone.
    assert len(buckets("hour", date(2026, 11, 10), date(2026, 11, 11), ZoneInfo(JAKARTA))) == 48
    assert buckets("hour", date(2026, 11, 10), date(2026, 11, 10), ZoneInfo(JAKARTA))[14][0] == \
        "2026-11-10T14:00:00+07:00"
    assert buckets("hour", date(2026, 11, 12), date(2026, 11, 12), ZoneInfo("Asia/Kolkata"))[0][0] == \
        "2026-11-12T00:00:00+05:30"
    ny = buckets("hour", date(2026, 11, 1), date(2026, 11, 1), ZoneInfo("America/New_York"))
    assert len(ny) == 25 and ny[1][0] == "2026-11-01T01:00:00-04:00" and ny[2][0] == "2026-11-01T01:00:00-05:00"
    assert [b[0] for b in buckets("week", date(2026, 11, 4), date(2026, 11, 25), ZoneInfo(JAKARTA))] == \
        ["2026-11-02", "2026-11-09", "2026-11-16", "2026-11-23"]
    assert [b[0] for b in buckets("month", date(2026, 10, 15), date(2026, 12, 10), ZoneInfo(JAKARTA))] == \
        ["2026-10-01", "2026-11-01", "2026-12-01"]
    # The window edge contacts: in the window exactly at lead + 7 days, out one second later.
    edge = [c for c in cs if gen.kinds[c["phone"]] == "window_edge"]
    rows = {c["phone"]: cohort_row("group", None, [c], WINDOW_EDGE) for c in edge}
    assert sorted((r["bookings"], r["transactions"], r["revenue"], r["orders"]) for r in rows.values()) == \
        [(0, 1, "350000.00", 1), (1, 1, "100000.00", 1)]
    # The reports of the main ranges have every row kind with data.
    rep = expected_report(contacts, "day", JAKARTA, date(2026, 11, 1), date(2026, 11, 20), 7)
    assert rep["rows"][-2]["bookings"] > 0 and rep["rows"][-1]["leads"] > 100
    assert any(r["kind"] == "group" and r["leads"] == 0 for r in expected_report(
        contacts, "hour", JAKARTA, date(2026, 11, 10), date(2026, 11, 11))["rows"])


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------

REPORT_CASES = [
    # group_by, tz (None: the tenant's default), from, to, window_days
    ("day", None, date(2026, 11, 1), date(2026, 11, 20), None),
    ("day", JAKARTA, date(2026, 11, 1), date(2026, 11, 20), WINDOW_EDGE),
    ("day", "UTC", date(2026, 11, 1), date(2026, 11, 20), None),
    ("day", "UTC", date(2026, 10, 25), date(2026, 11, 30), 3),
    ("day", "Asia/Kolkata", date(2026, 11, 1), date(2026, 11, 20), None),
    ("day", "America/New_York", date(2026, 10, 28), date(2026, 11, 5), None),
    ("week", JAKARTA, date(2026, 11, 4), date(2026, 11, 25), None),
    ("week", "UTC", date(2026, 11, 4), date(2026, 11, 25), 3),
    ("month", JAKARTA, date(2026, 10, 15), date(2026, 12, 10), None),
    ("month", "UTC", date(2026, 10, 15), date(2026, 12, 10), WINDOW_EDGE),
    ("hour", JAKARTA, date(2026, 11, 10), date(2026, 11, 11), None),
    ("hour", JAKARTA, date(2026, 11, 5), date(2026, 11, 6), 1),
    ("hour", "Asia/Kolkata", date(2026, 11, 12), date(2026, 11, 13), None),
    ("channel", JAKARTA, date(2026, 11, 1), date(2026, 11, 30), None),
    ("channel", None, date(2026, 11, 1), date(2026, 11, 30), WINDOW_EDGE),
    ("campaign", JAKARTA, date(2026, 10, 25), date(2026, 11, 30), None),
    ("campaign", "UTC", date(2026, 11, 3), date(2026, 11, 18), 2),
]


@pytest.mark.parametrize("group_by,tz,d_from,d_to,window", REPORT_CASES,
                         ids=[f"{c[0]}-{c[1] or 'default'}-{c[2]}..{c[3]}-w{c[4]}" for c in REPORT_CASES])
def test_report_equals_the_oracle(world, group_by, tz, d_from, d_to, window):
    services, contacts, _ = world
    params = params_of(group_by, tz, d_from, d_to, window)
    res = get(services, "/v1/reports/funnel", params)
    assert res.status_code == 200, f"GET /v1/reports/funnel {params}: {res.status_code} {res.text[:1000]}"
    expected = expected_report(contacts, group_by, tz or JAKARTA, d_from, d_to, window)
    assert expected["rows"][-1]["leads"] > 0, "the case covers data"
    diffs = report_diffs(expected, res.json())
    assert not diffs, f"GET /v1/reports/funnel {params}: {len(diffs)} differences:\n" + "\n".join(diffs[:25])


def test_day_in_jakarta_and_in_utc_differ_and_both_match(world):
    services, contacts, _ = world
    d_from, d_to = date(2026, 11, 1), date(2026, 11, 20)
    jkt = ZoneInfo(JAKARTA)
    moved = [c for c in contacts.values() if c["lead_at"] and d_from < c["lead_at"].date() < d_to
             and c["lead_at"].astimezone(jkt).date() != c["lead_at"].astimezone(UTC).date()]
    assert len(moved) >= 10, "contacts whose lead falls on another day in Jakarta than in UTC"
    got = {}
    for tz in (JAKARTA, "UTC"):
        res = get(services, "/v1/reports/funnel", params_of("day", tz, d_from, d_to, None))
        assert res.status_code == 200, res.text[:1000]
        got[tz] = {r["group"]: r["leads"] for r in res.json()["rows"] if r["kind"] == "group"}
        exp = expected_report(contacts, "day", tz, d_from, d_to)
        assert got[tz] == {r["group"]: r["leads"] for r in exp["rows"] if r["kind"] == "group"}, tz
    assert got[JAKARTA] != got["UTC"], "the day of a lead depends on the time zone"
    c = moved[0]
    jd, ud = c["lead_at"].astimezone(jkt).date().isoformat(), c["lead_at"].date().isoformat()
    assert got[JAKARTA][jd] > 0 and got["UTC"][ud] > 0, (c["phone"], rfc3339(c["lead_at"]), jd, ud)


def test_report_defaults(world):
    services, contacts, _ = world
    before = datetime.now(ZoneInfo(JAKARTA)).date()
    res = get(services, "/v1/reports/funnel")
    after = datetime.now(ZoneInfo(JAKARTA)).date()
    assert res.status_code == 200, res.text[:1000]
    body = res.json()
    assert body["group_by"] == "day" and body["tz"] == JAKARTA and body["window_days"] is None, \
        {k: v for k, v in body.items() if k != "rows"}
    assert body["to"] in (before.isoformat(), after.isoformat()), f"to = today in Jakarta, got {body['to']}"
    d_to = date.fromisoformat(body["to"])
    assert body["from"] == (d_to - timedelta(days=29)).isoformat(), f"from = to - 29 days, got {body['from']}"
    expected = expected_report(contacts, "day", JAKARTA, d_to - timedelta(days=29), d_to)
    diffs = report_diffs(expected, body)
    assert not diffs, "GET /v1/reports/funnel (defaults):\n" + "\n".join(diffs[:25])


@pytest.mark.parametrize("group_by", ["day", "week", "month", "hour", "channel", "campaign"])
def test_empty_range_has_every_bucket_with_zeros(world, group_by):
    services, contacts, _ = world
    d_from, d_to = date(2025, 3, 3), (date(2025, 3, 4) if group_by == "hour" else date(2025, 3, 12))
    params = params_of(group_by, None, d_from, d_to, None)
    res = get(services, "/v1/reports/funnel", params)
    assert res.status_code == 200, res.text[:1000]
    expected = expected_report(contacts, group_by, JAKARTA, d_from, d_to)
    n_groups = {"day": 10, "week": 2, "month": 1, "hour": 48, "channel": 0, "campaign": 0}[group_by]
    assert len(expected["rows"]) == n_groups + 2
    for r in expected["rows"]:
        assert r["leads"] == r["bookings"] == r["transactions"] == r["orders"] == 0 and r["revenue"] == "0.00"
        assert all(r[f] is None for f in FLOAT_FIELDS) and r["average_order_value"] is None
    diffs = report_diffs(expected, res.json())
    assert not diffs, f"GET /v1/reports/funnel {params}:\n" + "\n".join(diffs[:25])


def test_hour_grouping_over_a_dst_change(world):
    """America/New_York leaves DST on 2026-11-01: that day has 25 hours, 01:00 twice (-04:00 and
    -05:00), and each is a bucket of its own."""
    services, contacts, _ = world
    params = params_of("hour", "America/New_York", date(2026, 11, 1), date(2026, 11, 1), None)
    res = get(services, "/v1/reports/funnel", params)
    assert res.status_code == 200, res.text[:1000]
    expected = expected_report(contacts, "hour", "America/New_York", date(2026, 11, 1), date(2026, 11, 1))
    assert len(expected["rows"]) == 25 + 2
    diffs = report_diffs(expected, res.json())
    assert not diffs, f"GET /v1/reports/funnel {params}:\n" + "\n".join(diffs[:25])


CSV_CASES = [("campaign", JAKARTA, date(2026, 10, 25), date(2026, 11, 30), None),
             ("campaign", "UTC", date(2026, 11, 3), date(2026, 11, 18), 2),
             ("day", None, date(2026, 11, 1), date(2026, 11, 20), WINDOW_EDGE),
             ("hour", JAKARTA, date(2026, 11, 10), date(2026, 11, 11), None),
             ("channel", JAKARTA, date(2025, 3, 1), date(2025, 3, 5), None)]


@pytest.mark.parametrize("group_by,tz,d_from,d_to,window", CSV_CASES,
                         ids=[f"{c[0]}-{c[1] or 'default'}-w{c[4]}" for c in CSV_CASES])
def test_report_csv_equals_json(world, group_by, tz, d_from, d_to, window):
    services, contacts, _ = world
    params = params_of(group_by, tz, d_from, d_to, window)
    js = get(services, "/v1/reports/funnel", params)
    res = get(services, "/v1/reports/funnel.csv", params)
    assert js.status_code == 200 and res.status_code == 200, (js.text[:500], res.text[:500])
    assert res.headers["content-type"].split(";")[0].strip() == "text/csv", res.headers["content-type"]
    text = res.content.decode("utf-8")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    assert header == REPORT_COLUMNS, f"CSV header {header}"
    rows = [dict(zip(header, r)) for r in reader]
    jrows = js.json()["rows"]
    assert len(rows) == len(jrows), f"CSV has {len(rows)} rows, JSON {len(jrows)}"
    diffs = []
    for i, (c, j) in enumerate(zip(rows, jrows)):
        for k in REPORT_COLUMNS:
            jv, cv = j.get(k), c.get(k)
            if jv is None:
                ok = cv == ""
            elif k in INT_FIELDS:
                ok = cv == str(jv)
            elif k in FLOAT_FIELDS:
                try:
                    ok = math.isclose(float(cv), jv, rel_tol=1e-9, abs_tol=1e-12)
                except ValueError:
                    ok = False
            else:
                ok = cv == jv
            if not ok:
                diffs.append(f"row {i} ({j.get('kind')} {j.get('group')!r}) {k}: JSON {jv!r}, CSV {cv!r}")
    assert not diffs, f"GET /v1/reports/funnel.csv {params}:\n" + "\n".join(diffs[:25])
    if group_by == "campaign":
        expected = expected_report(contacts, group_by, tz or JAKARTA, d_from, d_to, window)
        tricky = {r["group"] for r in expected["rows"]} & set(TRICKY_CAMPAIGNS)
        assert tricky, "the range has the tricky campaigns"
        assert tricky <= {r["group"] for r in rows}, "campaigns with commas, quotes, newlines survive CSV"
        assert "" in {r["group"] for r in rows if r["kind"] == "group"}, "the null campaign is an empty field"


@pytest.mark.parametrize("param,value", [("group_by", "year"), ("tz", "Mars/Olympus_Mons"), ("from", "2026-02-30"),
                                         ("from", "20261101"), ("to", "yesterday"), ("window_days", "0"),
                                         ("window_days", "3651"), ("window_days", "seven")])
def test_report_validation_names_the_parameter(world, param, value):
    services, _, _ = world
    params = {"group_by": "day", "from": "2026-11-01", "to": "2026-11-20"}
    params[param] = value
    for path in ("/v1/reports/funnel", "/v1/reports/funnel.csv"):
        res = get(services, path, params)
        assert res.status_code == 422, f"GET {path} {params}: expected 422, got {res.status_code} {res.text[:300]}"
        assert res.headers["content-type"].startswith("application/problem+json"), res.headers["content-type"]
        pointers = [e.get("pointer") for e in res.json().get("errors", [])]
        assert f"/query/{param}" in pointers, f"GET {path} {params}: pointers {pointers}, {res.text[:500]}"
        err = next(e for e in res.json()["errors"] if e.get("pointer") == f"/query/{param}")
        assert err.get("detail"), err


def test_report_from_after_to_is_rejected(world):
    services, _, _ = world
    params = {"from": "2026-11-20", "to": "2026-11-01"}
    res = get(services, "/v1/reports/funnel", params)
    assert res.status_code == 422, f"{params}: {res.status_code} {res.text[:300]}"
    pointers = [e.get("pointer") for e in res.json().get("errors", [])]
    assert set(pointers) & {"/query/from", "/query/to"}, pointers


# ---------------------------------------------------------------------------------------------
# Contacts
# ---------------------------------------------------------------------------------------------

def national_forms(e164):
    national = "0" + e164[3:]
    return [f"{national[:4]}-{national[4:8]}-{national[8:]}", f"+62 {e164[3:6]}-{e164[6:10]}-{e164[10:]}"]


def sample_contacts(contacts, gen):
    """One contact of each kind, and one per tricky campaign."""
    picked = {}
    for phone, c in sorted(contacts.items()):
        kind = gen.kinds[phone]
        if kind == "funnel":
            kind += f"-{c['stage']}"
        picked.setdefault(kind, phone)
        if c["campaign"] in TRICKY_CAMPAIGNS:
            picked.setdefault(c["campaign"], phone)
    return picked


def test_openapi_lists_the_analyst_paths(world):
    services, _, _ = world
    paths = set(get(services, "/openapi.json").json()["paths"])
    wanted = {"/v1/reports/funnel", "/v1/reports/funnel.csv", "/v1/contacts", "/v1/contacts.csv",
              "/v1/contacts/{phone}"}
    assert wanted <= paths, f"missing from /openapi.json: {sorted(wanted - paths)}"


def test_contacts_default_limit_is_100(world):
    services, contacts, _ = world
    res = get(services, "/v1/contacts")
    assert res.status_code == 200, res.text[:500]
    body = res.json()
    assert [c["phone"] for c in body["contacts"]] == [c["phone"] for c in listing(contacts)][:100], \
        f"GET /v1/contacts: the first 100 contacts by phone, got {len(body['contacts'])}"
    assert body["next_cursor"], "more pages follow"
    res = get(services, "/v1/contacts", {"limit": "1000"})
    assert res.status_code == 200 and len(res.json()["contacts"]) == len(contacts), res.text[:300]
    assert res.json()["next_cursor"] is None, "a page holding everything has no next_cursor"


def test_contact_by_phone_in_any_form(world):
    services, contacts, gen = world
    picked = sample_contacts(contacts, gen)
    assert len(picked) >= 8, picked
    for kind, phone in picked.items():
        expected = contact_view(contacts[phone])
        for form in [phone, *national_forms(phone)]:
            res = get(services, "/v1/contacts/" + quote(form, safe=""))
            assert res.status_code == 200, f"GET /v1/contacts/{quote(form, safe='')} ({kind}): " \
                                           f"{res.status_code} {res.text[:300]}"
            body = res.json()
            diffs = contact_diffs(expected, body)
            assert not diffs, f"GET /v1/contacts/{quote(form, safe='')} ({kind}):\n" + "\n".join(diffs)
            assert parse_ts(body["updated_at"]) is not None


def test_every_contact_by_phone_matches_the_oracle(world):
    services, contacts, _ = world
    diffs = []
    for phone, c in sorted(contacts.items()):
        res = get(services, "/v1/contacts/" + quote(phone, safe=""))
        if res.status_code != 200:
            diffs.append(f"{phone}: {res.status_code} {res.text[:200]}")
            continue
        diffs += [f"{phone}: {d}" for d in contact_diffs(contact_view(c), res.json())]
    assert not diffs, f"{len(diffs)} differences:\n" + "\n".join(diffs[:25])


def test_unknown_and_unparsable_phones(world):
    services, contacts, _ = world
    assert UNKNOWN_PHONE not in contacts
    res = get(services, "/v1/contacts/" + quote(UNKNOWN_PHONE, safe=""))
    assert res.status_code == 404, f"GET /v1/contacts/{UNKNOWN_PHONE}: {res.status_code} {res.text[:300]}"
    assert res.headers["content-type"].startswith("application/problem+json"), res.headers["content-type"]
    res = get(services, "/v1/contacts/not-a-phone")
    assert res.status_code == 422, f"GET /v1/contacts/not-a-phone: {res.status_code} {res.text[:300]}"
    assert res.headers["content-type"].startswith("application/problem+json"), res.headers["content-type"]


def page_through(services, params, limit=7):
    """Every contact of /v1/contacts with these filters, following next_cursor; (rows, pages)."""
    rows, cursor, pages = [], None, 0
    while True:
        p = dict(params, limit=str(limit))
        if cursor is not None:
            p["cursor"] = cursor
        res = get(services, "/v1/contacts", p)
        assert res.status_code == 200, f"GET /v1/contacts {p}: {res.status_code} {res.text[:500]}"
        body = res.json()
        assert len(body["contacts"]) <= limit, f"{p}: {len(body['contacts'])} rows over the limit"
        rows += body["contacts"]
        pages += 1
        cursor = body.get("next_cursor")
        if cursor is None:
            return rows, pages
        assert body["contacts"], f"{p}: an empty page with a next_cursor"
        assert pages <= 400 // limit + 100, f"{p}: paging does not end"


def dates_range(tz, d_from, d_to):
    zone = ZoneInfo(tz)
    return day_start(d_from, zone), day_start(d_to + timedelta(days=1), zone)


def listing(contacts, stage=None, start=None, end=None, channel=None, desc=False):
    """The oracle's /v1/contacts: filtered, ordered by the stage's time (lead_at with from/to and
    no stage) then phone, or by phone alone without stage and from/to."""
    key_field = f"{stage}_at" if stage else ("lead_at" if start or end else None)
    out = []
    for c in contacts.values():
        if channel is not None and c["channel"] != channel:
            continue
        if key_field:
            t = c[key_field]
            if t is None or start is not None and t < start or end is not None and t >= end:
                continue
        out.append(c)
    out.sort(key=lambda c: (c[key_field], c["phone"]) if key_field else c["phone"])
    return out[::-1] if desc else out


def assert_listing(got_rows, expected, what):
    got_phones = [r.get("phone") for r in got_rows]
    exp_phones = [c["phone"] for c in expected]
    dup = {p for p in got_phones if got_phones.count(p) > 1}
    assert not dup, f"{what}: contacts seen twice: {sorted(dup)[:10]}"
    if got_phones != exp_phones:
        missing = [p for p in exp_phones if p not in got_phones]
        extra = [p for p in got_phones if p not in exp_phones]
        first = next((i for i, (a, b) in enumerate(zip(got_phones, exp_phones)) if a != b), None)
        raise AssertionError(f"{what}: expected {len(exp_phones)} contacts, got {len(got_phones)}; missing "
                             f"{missing[:10]}, unexpected {extra[:10]}, first order difference at {first}: "
                             f"got {got_phones[first:first + 3] if first is not None else None}, "
                             f"expected {exp_phones[first:first + 3] if first is not None else None}")
    diffs = []
    for r, c in zip(got_rows, expected):
        diffs += [f"{c['phone']}: {d}" for d in contact_diffs(contact_view(c), r)]
    assert not diffs, f"{what}: rows differ:\n" + "\n".join(diffs[:20])


def fetch_csv(services, params):
    res = get(services, "/v1/contacts.csv", params)
    assert res.status_code == 200, f"GET /v1/contacts.csv {params}: {res.status_code} {res.text[:500]}"
    assert res.headers["content-type"].split(";")[0].strip() == "text/csv", res.headers["content-type"]
    reader = csv.reader(io.StringIO(res.content.decode("utf-8"), newline=""))
    header = next(reader)
    assert header == CONTACT_COLUMNS, f"contacts.csv header {header}"
    return [dict(zip(header, r)) for r in reader]


LISTINGS = [
    ("all", {}, {}),
    ("all-desc", {"order": "desc"}, {"desc": True}),
    ("booking-dates", {"stage": "booking", "from": "2026-11-08", "to": "2026-11-15"},
     {"stage": "booking", "range": (JAKARTA, date(2026, 11, 8), date(2026, 11, 15))}),
    ("booking-dates-desc", {"stage": "booking", "from": "2026-11-08", "to": "2026-11-15", "order": "desc"},
     {"stage": "booking", "range": (JAKARTA, date(2026, 11, 8), date(2026, 11, 15)), "desc": True}),
    ("booking-dates-utc", {"stage": "booking", "from": "2026-11-08", "to": "2026-11-15", "tz": "UTC"},
     {"stage": "booking", "range": ("UTC", date(2026, 11, 8), date(2026, 11, 15))}),
    ("transaction", {"stage": "transaction"}, {"stage": "transaction"}),
    ("lead-dates-no-stage", {"from": "2026-11-03", "to": "2026-11-04"},
     {"range": (JAKARTA, date(2026, 11, 3), date(2026, 11, 4))}),
    ("channel", {"channel": "website"}, {"channel": "website"}),
    ("channel-lead-dates", {"channel": "ads", "stage": "lead", "from": "2026-11-02", "to": "2026-11-12"},
     {"channel": "ads", "stage": "lead", "range": (JAKARTA, date(2026, 11, 2), date(2026, 11, 12))}),
]


def expected_listing(contacts, spec):
    start = end = None
    if "range" in spec:
        start, end = dates_range(*spec["range"])
    return listing(contacts, spec.get("stage"), start, end, spec.get("channel"), spec.get("desc", False))


@pytest.mark.parametrize("name,params,spec", LISTINGS, ids=[x[0] for x in LISTINGS])
def test_contacts_pages_and_csv(world, name, params, spec):
    services, contacts, _ = world
    expected = expected_listing(contacts, spec)
    assert expected, f"{name}: the case selects contacts"
    rows, pages = page_through(services, params)
    assert_listing(rows, expected, f"GET /v1/contacts {params} paged by 7 ({pages} pages)")
    assert pages >= math.ceil(len(expected) / 7)
    csv_rows = fetch_csv(services, params)
    assert [normalize_contact(r) for r in csv_rows] == [normalize_contact(r) for r in rows], \
        f"GET /v1/contacts.csv {params} differs from the paged list"


def test_contacts_instant_range_is_half_open(world):
    services, contacts, _ = world
    leads = sorted((c for c in contacts.values() if c["lead_at"]), key=lambda c: c["lead_at"])
    lo, hi = leads[40]["lead_at"], leads[90]["lead_at"]
    params = {"stage": "lead", "from": lo.astimezone(ZoneInfo(JAKARTA)).isoformat(), "to": rfc3339(hi)}
    rows, _ = page_through(services, params, limit=25)
    expected = listing(contacts, "lead", lo, hi)
    assert len(expected) == 50 and expected[0]["lead_at"] == lo
    assert_listing(rows, expected, f"GET /v1/contacts {params} (from inclusive, to exclusive)")


def test_contacts_csv_with_tricky_campaigns(world):
    services, contacts, _ = world
    rows = fetch_csv(services, {})
    got = [normalize_contact(r) for r in rows]
    tricky = {r["campaign"] for r in got} & set(TRICKY_CAMPAIGNS)
    assert tricky == set(TRICKY_CAMPAIGNS), f"campaigns with commas, quotes, newlines in contacts.csv: {tricky}"
    expected = [contact_view(c) for c in listing(contacts)]
    assert [r["phone"] for r in got] == [e["phone"] for e in expected], "contacts.csv: every contact, by phone"
    diffs = []
    for g, e in zip(got, expected):
        diffs += [f"{e['phone']} {k}: expected {v!r}, got {g[k]!r}" for k, v in e.items() if g[k] != v]
    assert not diffs, "GET /v1/contacts.csv differs from the oracle:\n" + "\n".join(diffs[:20])


def stuck(contacts, stage, days, now):
    cutoff = now - timedelta(days=days)
    if stage == "lead":
        out = [c for c in contacts.values() if c["lead_at"] and not c["booking_at"] and not c["transaction_at"]
               and c["lead_at"] < cutoff]
    else:
        out = [c for c in contacts.values() if c["booking_at"] and not c["transaction_at"] and c["booking_at"] < cutoff]
    return sorted(out, key=lambda c: (c[f"{stage}_at"], c["phone"]))


def choose_stuck_days(contacts, stage, now):
    """N with stuck contacts on both sides of now - N days and none within 10 minutes of it, so the
    seconds between the oracle's now and the service's cannot matter."""
    field = f"{stage}_at"
    times = [c[field] for c in contacts.values() if c[field]]
    base = max(1, (now - datetime(2026, 11, 12, tzinfo=UTC)).days)
    for n in [base, base + 1, base - 1, base + 2, base - 2, base + 3, base - 3]:
        cutoff = now - timedelta(days=n)
        if n >= 1 and all(abs(t - cutoff) > timedelta(minutes=10) for t in times) \
                and any(t < cutoff for t in times) and any(t > cutoff for t in times):
            return n
    pytest.fail(f"no stuck_days N splits the {stage} times cleanly at {now}")


@pytest.mark.parametrize("stage", ["lead", "booking"])
def test_stuck_exports(world, stage):
    services, contacts, _ = world
    now = datetime.now(UTC)
    n = choose_stuck_days(contacts, stage, now)
    expected = stuck(contacts, stage, n, now)
    assert expected, f"stuck at {stage} for {n} days"
    reached = [c for c in contacts.values() if c[f"{stage}_at"] and not c["transaction_at"]
               and (stage == "booking" or not c["booking_at"])]
    assert len(expected) < len(reached), "some are not stuck long enough"
    params = {"stage": stage, "stuck_days": str(n)}
    rows = fetch_csv(services, params)
    got = [r["phone"] for r in rows]
    assert got == [c["phone"] for c in expected], \
        f"GET /v1/contacts.csv {params} (now {rfc3339(now)}): expected {len(expected)} contacts " \
        f"{[c['phone'] for c in expected][:5]}..., got {len(got)} {got[:5]}...; missing " \
        f"{sorted(set(c['phone'] for c in expected) - set(got))[:5]}, unexpected " \
        f"{sorted(set(got) - set(c['phone'] for c in expected))[:5]}"
    paged, _ = page_through(services, params, limit=50)
    assert_listing(paged, expected, f"GET /v1/contacts {params}")


CONTACT_ERRORS = [({"stuck_days": "5"}, {"stuck_days", "stage"}),
                  ({"stage": "transaction", "stuck_days": "5"}, {"stuck_days", "stage"}),
                  ({"stage": "lead", "stuck_days": "many"}, {"stuck_days"}),
                  ({"stage": "won"}, {"stage"}),
                  ({"limit": "0"}, {"limit"}), ({"limit": "1001"}, {"limit"}),
                  ({"order": "sideways"}, {"order"}),
                  ({"from": "2026-13-01"}, {"from"}),
                  ({"tz": "Mars/Olympus_Mons", "from": "2026-11-01"}, {"tz"}),
                  ({"cursor": "not-a-cursor"}, {"cursor"})]


@pytest.mark.parametrize("params,names", CONTACT_ERRORS, ids=["&".join(f"{k}={v}" for k, v in p.items())
                                                              for p, _ in CONTACT_ERRORS])
def test_contacts_validation(world, params, names):
    services, _, _ = world
    res = get(services, "/v1/contacts", params)
    assert res.status_code == 422, f"GET /v1/contacts {params}: expected 422, got {res.status_code} {res.text[:300]}"
    assert res.headers["content-type"].startswith("application/problem+json"), res.headers["content-type"]
    pointers = [e.get("pointer") for e in res.json().get("errors", [])]
    assert {f"/query/{k}" for k in names} & set(pointers), f"GET /v1/contacts {params}: pointers {pointers}"


# ---------------------------------------------------------------------------------------------
# funnel_daily
# ---------------------------------------------------------------------------------------------

def test_funnel_daily_equals_the_oracle(world):
    services, contacts, _ = world
    raw = services.sql("SELECT coalesce(json_agg(d), '[]') FROM funnel_daily d")
    got = {}
    for r in json.loads(raw, parse_float=Decimal):
        assert r["tenant"] == "default", r
        key = (r["day"], r["channel"])
        assert key not in got, f"funnel_daily has two rows for {key}"
        got[key] = {"leads": r["leads"], "bookings": r["bookings"], "transactions": r["transactions"],
                    "revenue": Decimal(r["revenue"]), "orders": r["orders"]}
        assert any(v for v in got[key].values()), f"an all-zero row {key}"
    expected = expected_daily(contacts)
    assert any(ch is None for _, ch in expected), "the dataset has contacts without a lead"
    diffs = []
    for key in sorted(set(expected) | set(got), key=lambda k: (k[0], k[1] or "")):
        if expected.get(key) != got.get(key):
            diffs.append(f"{key}: expected {expected.get(key)}, got {got.get(key)}")
    assert not diffs, f"funnel_daily: {len(diffs)} rows differ:\n" + "\n".join(diffs[:25])
    # The same figures as the day report of the whole range.
    days = sorted({k[0] for k in expected})
    report = expected_report(contacts, "day", JAKARTA, date.fromisoformat(days[0]), date.fromisoformat(days[-1]))
    assert sum(v["leads"] for v in expected.values()) == report["rows"][-1]["leads"]
