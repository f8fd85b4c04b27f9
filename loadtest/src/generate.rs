//! `funnel-loadtest generate`: realistic chat traffic, deterministic from a seed.
//!
//! Contacts of one or more tenants walk a funnel (lead, booking, payment) over several days in
//! Indonesian, through the channels growth teams use, with agent replies and small talk between.
//! The traffic is written in the order a client would send it: roughly by time, with
//! out-of-order neighbours, late arrivals, duplicates of the same event (with the phone typed
//! differently) and a share of invalid bodies the API must refuse.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, FixedOffset, SecondsFormat, Utc};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::vocabulary::{
    AGENT_REPLIES, BOOKING_TEXTS, CAMPAIGNS, CHANNELS, LEAD_TEXTS, MOBILE_PREFIXES, PAYMENT_TEXTS,
    SMALL_TALK,
};

/// The rules the generated texts are written for: the rule set every new database starts with
/// (`sql/`, version 1), in the contract's CSV form. A test checks the two stay the same.
pub const DEFAULT_RULES_CSV: &str = "\
stage,match,pattern,channel,direction,priority
lead,word,info,,inbound,100
lead,word,harga,,inbound,100
lead,word,promo,,inbound,100
lead,word,tertarik,,inbound,100
lead,word,pricelist,,inbound,100
booking,word,booking,,,100
booking,word,reservasi,,,100
booking,word,jadwalkan,,,100
booking,word,daftar,,inbound,100
transaction,word,sudah transfer,,inbound,100
transaction,word,sudah bayar,,inbound,100
transaction,word,lunas,,,100
transaction,word,bukti transfer,,inbound,100
";

/// What to generate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GenConfig {
    pub seed: u64,
    /// Contacts per tenant
    pub contacts: u32,
    pub tenants: u32,
    /// Event times fall in `days` days from `start`
    pub start: DateTime<FixedOffset>,
    pub days: u32,
    /// Invalid bodies, as a share of the valid messages
    pub invalid_share: f64,
    /// Valid messages sent again (1 to 3 more times)
    pub duplicate_share: f64,
    /// Valid messages held back to the end of the traffic (days late)
    pub late_share: f64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 1,
            contacts: 1000,
            tenants: 1,
            #[allow(clippy::unwrap_used)]
            start: DateTime::parse_from_rfc3339("2026-10-01T00:00:00+07:00").unwrap(),
            days: 14,
            invalid_share: 0.02,
            duplicate_share: 0.05,
            late_share: 0.03,
        }
    }
}

/// Whether the API must take a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Accept,
    Reject,
}

/// One request body, for the tenant whose token sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    pub tenant: String,
    pub expect: Expect,
    /// The reason an invalid body must be refused (for the reader of the dataset)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
    /// The contact (E.164) of a valid message: what the API must normalize the phone to
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    /// The JSON body of `POST /v1/messages`
    pub body: serde_json::Value,
}

/// The generated traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Traffic {
    pub config: GenConfig,
    /// In send order
    pub messages: Vec<Outgoing>,
}

/// Tenant names: `default`, then `tenant-2`, `tenant-3`, ...
pub fn tenant_name(i: u32) -> String {
    if i == 0 {
        "default".to_string()
    } else {
        format!("tenant-{}", i + 1)
    }
}

/// A contact's phone written the ways people type it; every form normalizes to `e164`.
pub fn typed_phone(e164: &str, form: u32) -> String {
    let national = &e164[3..]; // after "+62"
    let (a, b, c) = (&national[..3], &national[3..7], &national[7..]);
    match form % 7 {
        0 => format!("0{a}-{b}-{c}"),
        1 => format!("62{national}"),
        2 => format!("+62 {a} {b} {c}"),
        3 => format!("+62-{a}-{b}-{c}"),
        4 => format!("0{a} {b} {c}"),
        5 => format!("(0{a}) {b}{c}"),
        _ => e164.to_string(),
    }
}

pub(crate) fn weighted<'a>(rng: &mut ChaCha8Rng, items: &'a [(&'a str, u32)]) -> &'a str {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0..total);
    for (item, w) in items {
        if x < *w {
            return item;
        }
        x -= w;
    }
    items[0].0
}

pub(crate) fn pick<'a>(rng: &mut ChaCha8Rng, items: &'a [&'a str]) -> &'a str {
    items.choose(rng).copied().unwrap_or_default()
}

/// One valid message before it is written as JSON.
struct Planned {
    tenant: String,
    e164: String,
    event_id: Option<String>,
    channel: String,
    campaign: Option<String>,
    direction: &'static str,
    text: String,
    at: DateTime<Utc>,
    /// Sort key for the send order
    arrival: DateTime<Utc>,
}

struct Gen {
    rng: ChaCha8Rng,
    next_id: u64,
    planned: Vec<Planned>,
}

impl Gen {
    fn event_id(&mut self) -> Option<String> {
        // Four in five messages carry the channel's id; the rest get the derived one.
        if self.rng.random_bool(0.8) {
            self.next_id += 1;
            Some(format!(
                "wamid.{:06}{:08x}",
                self.next_id,
                self.rng.random::<u32>()
            ))
        } else {
            None
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        tenant: &str,
        e164: &str,
        channel: &str,
        campaign: Option<&str>,
        direction: &'static str,
        text: &str,
        at: DateTime<Utc>,
        event_id: Option<String>,
    ) {
        // Arrival: near the event time, up to two hours either way (out of order with
        // neighbours, never before the event by more than the jitter).
        let jitter = Duration::seconds(self.rng.random_range(-7200..7200));
        self.planned.push(Planned {
            tenant: tenant.to_string(),
            e164: e164.to_string(),
            event_id,
            channel: channel.to_string(),
            campaign: campaign.map(str::to_string),
            direction,
            text: text.to_string(),
            at,
            arrival: at + jitter,
        });
    }

    fn contact(&mut self, tenant: &str, e164: &str, start: DateTime<Utc>, days: u32) {
        let first = weighted(&mut self.rng, &CHANNELS).to_string();
        let campaign = matches!(first.as_str(), "ads" | "campaign_blast")
            .then(|| pick(&mut self.rng, &CAMPAIGNS).to_string());
        let campaign = campaign.as_deref();
        // Event times in whole milliseconds, like the Avro record.
        let t0 =
            start + Duration::milliseconds(self.rng.random_range(0..i64::from(days) * 86_400_000));
        let kind = self.rng.random_range(0..100);
        let mut t = t0;
        let mut step = |rng: &mut ChaCha8Rng, lo_min: i64, hi_min: i64| {
            t += Duration::milliseconds(rng.random_range(lo_min * 60_000..hi_min * 60_000));
            t
        };
        if kind < 8 {
            // Only small talk: a contact, never a lead.
            for _ in 0..self.rng.random_range(1..3) {
                let text = pick(&mut self.rng, &SMALL_TALK);
                let at = step(&mut self.rng, 1, 600);
                let id = self.event_id();
                self.push(tenant, e164, &first, campaign, "inbound", text, at, id);
            }
            return;
        }
        let has_lead = kind >= 15; // 7 in 100 book (and maybe pay) without asking first
        if has_lead {
            let text = pick(&mut self.rng, &LEAD_TEXTS);
            let id = self.event_id();
            self.push(tenant, e164, &first, campaign, "inbound", text, t0, id);
            if self.rng.random_bool(0.03) {
                // A second lead at the same instant on another channel: the earliest lead with
                // the smallest event id decides the channel.
                let id = self.event_id().or_else(|| {
                    self.next_id += 1;
                    Some(format!("wamid.{:06}tie", self.next_id))
                });
                self.push(tenant, e164, "direct", None, "inbound", text, t0, id);
            }
            let reply = pick(&mut self.rng, &AGENT_REPLIES[..3]);
            let at = step(&mut self.rng, 1, 30);
            let id = self.event_id();
            self.push(tenant, e164, &first, campaign, "outbound", reply, at, id);
            if self.rng.random_bool(0.5) {
                let text = pick(&mut self.rng, &SMALL_TALK);
                let at = step(&mut self.rng, 1, 120);
                let id = self.event_id();
                self.push(tenant, e164, &first, campaign, "inbound", text, at, id);
            }
        }
        let books = if has_lead {
            self.rng.random_bool(0.55)
        } else {
            true
        };
        if !books {
            if self.rng.random_bool(0.1) {
                // Comes back weeks later through another channel: still the first lead counts.
                let text = pick(&mut self.rng, &LEAD_TEXTS);
                let at = step(&mut self.rng, 3 * 1440, 10 * 1440);
                let id = self.event_id();
                self.push(tenant, e164, "website", None, "inbound", text, at, id);
            }
            return;
        }
        let text = pick(&mut self.rng, &BOOKING_TEXTS);
        let at = step(&mut self.rng, 10, 5 * 1440);
        let id = self.event_id();
        self.push(tenant, e164, "direct", None, "inbound", text, at, id);
        if self.rng.random_bool(0.5) {
            let reply = pick(&mut self.rng, &AGENT_REPLIES[3..]);
            let at = step(&mut self.rng, 1, 60);
            let id = self.event_id();
            self.push(tenant, e164, "direct", None, "outbound", reply, at, id);
        }
        if !self.rng.random_bool(0.6) {
            return;
        }
        let payments = if self.rng.random_bool(0.1) { 2 } else { 1 };
        for _ in 0..payments {
            let text = pick(&mut self.rng, &PAYMENT_TEXTS);
            let at = step(&mut self.rng, 60, 7 * 1440);
            let id = self.event_id();
            self.push(tenant, e164, "direct", None, "inbound", text, at, id);
        }
    }
}

const JAKARTA: FixedOffset = match FixedOffset::east_opt(7 * 3600) {
    Some(o) => o,
    None => panic!("UTC+7 is a valid offset"),
};

/// Event times written as integrations write them: UTC or Jakarta time, with or without
/// milliseconds.
fn timestamp(at: DateTime<Utc>, form: u32) -> String {
    match form % 4 {
        0 => at.to_rfc3339_opts(SecondsFormat::Millis, true),
        1 | 2 => at
            .with_timezone(&JAKARTA)
            .to_rfc3339_opts(SecondsFormat::AutoSi, false),
        _ => at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    }
}

fn body(p: &Planned, phone_form: u32, time_form: u32) -> serde_json::Value {
    let mut b = serde_json::json!({
        "phone": typed_phone(&p.e164, phone_form),
        "channel": p.channel,
        "direction": p.direction,
        "text": p.text,
        "sent_at": timestamp(p.at, time_form),
    });
    if let Some(id) = &p.event_id {
        b["event_id"] = id.clone().into();
    }
    if let Some(c) = &p.campaign {
        b["campaign"] = c.clone().into();
    }
    b
}

/// Invalid bodies, each refused for one reason the API names.
fn invalid(rng: &mut ChaCha8Rng, like: &serde_json::Value) -> (String, serde_json::Value) {
    let mut b = like.clone();
    let reason = match rng.random_range(0..7) {
        0 => {
            b["phone"] = pick(rng, &["0812", "12345", "abc-def-ghij", "+62 000"]).into();
            "phone is not a phone number"
        }
        1 => {
            b.as_object_mut().map(|o| o.remove("text"));
            "text is missing"
        }
        2 => {
            b.as_object_mut().map(|o| o.remove("sent_at"));
            "sent_at is missing"
        }
        3 => {
            b["text"] = "x".repeat(64 * 1024 + 1).into();
            "text is over 64 KiB"
        }
        4 => {
            b["channel"] = "Facebook Ads!".into();
            "channel is not a slug"
        }
        5 => {
            b["sent_at"] = "2099-01-01T00:00:00Z".into();
            "sent_at is more than 24 h in the future"
        }
        _ => {
            b["direction"] = "sideways".into();
            "direction is neither inbound nor outbound"
        }
    };
    (reason.to_string(), b)
}

/// Generates the traffic of `config`; the same config always gives the same traffic.
pub fn generate(config: &GenConfig) -> Traffic {
    let mut g = Gen {
        rng: ChaCha8Rng::seed_from_u64(config.seed),
        next_id: 0,
        planned: Vec::new(),
    };
    let start = config.start.with_timezone(&Utc);
    let mut previous: Vec<String> = Vec::new();
    for t in 0..config.tenants {
        let tenant = tenant_name(t);
        let mut phones = BTreeSet::new();
        while phones.len() < config.contacts as usize {
            // One in twenty people also writes to the previous tenant: tenants are separate.
            let e164 = if !previous.is_empty() && g.rng.random_bool(0.05) {
                pick(
                    &mut g.rng,
                    &previous.iter().map(String::as_str).collect::<Vec<_>>(),
                )
                .to_string()
            } else {
                format!(
                    "+62{}{:08}",
                    pick(&mut g.rng, &MOBILE_PREFIXES),
                    g.rng.random_range(0..100_000_000)
                )
            };
            phones.insert(e164);
        }
        for e164 in &phones {
            g.contact(&tenant, e164, start, config.days);
        }
        previous = phones.into_iter().collect();
    }
    let mut planned = std::mem::take(&mut g.planned);
    let mut rng = g.rng;
    // Late arrivals are held back to after everything else.
    let horizon = start + Duration::days(i64::from(config.days) + 30);
    for p in &mut planned {
        if rng.random_bool(config.late_share) {
            p.arrival = horizon + Duration::seconds(rng.random_range(0..86_400));
        }
    }
    planned.sort_by(|a, b| (a.arrival, &a.e164, a.at).cmp(&(b.arrival, &b.e164, b.at)));
    let messages: Vec<Outgoing> = planned
        .iter()
        .map(|p| Outgoing {
            tenant: p.tenant.clone(),
            expect: Expect::Accept,
            invalid: None,
            contact: Some(p.e164.clone()),
            body: body(p, rng.random(), rng.random()),
        })
        .collect();
    // Duplicates: the same event again later, with the phone typed another way.
    let mut extra = Vec::new();
    for (i, p) in planned.iter().enumerate() {
        if rng.random_bool(config.duplicate_share) {
            let mut dup = messages[i].clone();
            dup.body["phone"] = typed_phone(&p.e164, rng.random()).into();
            for _ in 0..rng.random_range(1..=3) {
                let at = rng.random_range(i + 1..=messages.len());
                extra.push((at, dup.clone()));
            }
        }
    }
    let invalid_count = (planned.len() as f64 * config.invalid_share).round() as usize;
    for _ in 0..invalid_count {
        let like = messages
            .choose(&mut rng)
            .map(|m| (m.tenant.clone(), m.body.clone()));
        if let Some((tenant, like)) = like {
            let (reason, b) = invalid(&mut rng, &like);
            let at = rng.random_range(0..=messages.len());
            extra.push((
                at,
                Outgoing {
                    tenant,
                    expect: Expect::Reject,
                    invalid: Some(reason),
                    contact: None,
                    body: b,
                },
            ));
        }
    }
    // Merge: each extra goes before the message at its position.
    extra.sort_by_key(|(at, _)| *at);
    let mut extra = extra.into_iter().peekable();
    let mut merged = Vec::with_capacity(messages.len() + extra.len());
    for (i, m) in messages.into_iter().enumerate() {
        while let Some((_, e)) = extra.next_if(|(at, _)| *at <= i) {
            merged.push(e);
        }
        merged.push(m);
    }
    merged.extend(extra.map(|(_, e)| e));
    let mut messages = merged;
    // Within one send batch the order is arbitrary anyway; shuffle small windows.
    for w in messages.chunks_mut(8) {
        w.shuffle(&mut rng);
    }
    Traffic {
        config: config.clone(),
        messages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use funnel_schemas::rules::{rules_from_csv, Classifier, Stage};
    use funnel_schemas::Direction;
    use rust_decimal::Decimal;
    use std::collections::{BTreeMap, BTreeSet};

    fn small(seed: u64) -> Traffic {
        generate(&GenConfig {
            seed,
            contacts: 150,
            tenants: 2,
            ..GenConfig::default()
        })
    }

    #[test]
    fn the_same_seed_gives_the_same_traffic() {
        let a = small(42);
        assert_eq!(a, small(42));
        assert_ne!(a.messages, small(43).messages);
        assert!(
            a.messages.len() > 150 * 2 * 3,
            "{} messages",
            a.messages.len()
        );
    }

    #[test]
    fn labels_agree_with_the_apis_validation() {
        // Every body labelled accept passes the API's own validation and normalizes to its
        // contact; every body labelled reject is refused.
        let region = funnel_schemas::phone::parse_region("ID").unwrap();
        let now = chrono::Utc::now();
        let traffic = small(7);
        let mut reasons = BTreeSet::new();
        for m in &traffic.messages {
            let checked = funnel_schemas::validate::from_json(m.body.clone()).and_then(|raw| {
                funnel_schemas::validate::validate(
                    raw,
                    &m.tenant,
                    region,
                    funnel_schemas::validate::Limits::default(),
                    now,
                )
            });
            match m.expect {
                Expect::Accept => {
                    let msg = checked.unwrap_or_else(|e| panic!("{:?}: {e:?}", m.body));
                    assert_eq!(Some(&msg.phone), m.contact.as_ref(), "{:?}", m.body);
                }
                Expect::Reject => {
                    assert!(checked.is_err(), "{:?} should be refused", m.invalid);
                    reasons.insert(m.invalid.clone().unwrap_or_default());
                }
            }
        }
        assert!(reasons.len() >= 5, "invalid kinds: {reasons:?}");
    }

    #[test]
    fn texts_classify_as_written_under_the_default_rules() {
        let rules = Classifier::new(1, rules_from_csv(DEFAULT_RULES_CSV).unwrap()).unwrap();
        let only = |text: &str, direction| {
            rules
                .classify(text, "ads", direction)
                .into_iter()
                .map(|h| (h.stage, h.value))
                .collect::<Vec<_>>()
        };
        for t in LEAD_TEXTS {
            assert_eq!(
                only(t, Direction::Inbound),
                [(Stage::Lead, Decimal::ZERO)],
                "{t}"
            );
        }
        for t in BOOKING_TEXTS {
            assert_eq!(
                only(t, Direction::Inbound),
                [(Stage::Booking, Decimal::ZERO)],
                "{t}"
            );
        }
        for t in SMALL_TALK {
            assert_eq!(only(t, Direction::Inbound), [], "{t}");
        }
        let values = [
            1_500_000, 1_500_000, 2_500_000, 350_000, 350_000, 1_200_000, 1_500_000, 2_000_000, 0,
        ];
        for (t, v) in PAYMENT_TEXTS.iter().zip(values) {
            assert_eq!(
                only(t, Direction::Inbound),
                [(Stage::Transaction, Decimal::from(v))],
                "{t}"
            );
        }
        // Agent replies: an outbound lead keyword is not a lead; a booking confirmation and a
        // "lunas" are stages whoever writes them (as the rules say).
        assert_eq!(only(AGENT_REPLIES[1], Direction::Outbound), []);
        assert_eq!(
            only(AGENT_REPLIES[3], Direction::Outbound),
            [(Stage::Booking, Decimal::ZERO)]
        );
        assert_eq!(
            only(AGENT_REPLIES[6], Direction::Outbound),
            [],
            "rebooking is not booking"
        );
    }

    #[test]
    fn traffic_has_the_hard_cases() {
        let traffic = small(3);
        let valid: Vec<&Outgoing> = traffic
            .messages
            .iter()
            .filter(|m| m.expect == Expect::Accept)
            .collect();
        // Duplicates: one event id sent more than once.
        let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
        for m in &valid {
            if let Some(id) = m.body["event_id"].as_str() {
                *ids.entry(id).or_default() += 1;
            }
        }
        assert!(ids.values().any(|n| *n > 1), "no duplicate event ids");
        // Phone forms: some contact's phone typed more than one way.
        let mut forms: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for m in &valid {
            forms
                .entry(m.contact.as_deref().unwrap_or_default())
                .or_default()
                .insert(m.body["phone"].as_str().unwrap_or_default());
        }
        assert!(forms.values().filter(|f| f.len() > 2).count() > 10);
        // Out of order: a contact's message arrives after a later one of the same contact.
        let mut latest: BTreeMap<&str, chrono::DateTime<chrono::FixedOffset>> = BTreeMap::new();
        let mut late = 0;
        for m in &valid {
            let at =
                chrono::DateTime::parse_from_rfc3339(m.body["sent_at"].as_str().unwrap()).unwrap();
            let c = m.contact.as_deref().unwrap_or_default();
            if latest.get(c).is_some_and(|l| *l > at) {
                late += 1;
            }
            latest
                .entry(c)
                .and_modify(|l| *l = (*l).max(at))
                .or_insert(at);
        }
        assert!(late > 20, "{late} late messages");
        // Messages without an event id (the derived id) and invalid bodies.
        assert!(valid.iter().any(|m| m.body.get("event_id").is_none()));
        assert!(traffic.messages.iter().any(|m| m.expect == Expect::Reject));
        // Two tenants, and a phone that writes to both.
        let mut tenants_of: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for m in &valid {
            tenants_of
                .entry(m.contact.as_deref().unwrap_or_default())
                .or_default()
                .insert(&m.tenant);
        }
        assert!(tenants_of.values().any(|t| t.len() == 2));
    }
}
