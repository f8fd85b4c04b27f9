//! The reference fold: the funnel rows a traffic must produce, computed the obvious way.
//!
//! Written for the oracle and kept small on purpose: it holds every distinct event in memory,
//! groups them by contact and takes minimums and sums, with none of the processor's state,
//! batching or storage. It shares only the pure, table-tested rule matching and money parsing
//! (`funnel_schemas::rules`) and the contract's event-id derivation.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use funnel_schemas::rules::{Classifier, Stage};
use funnel_schemas::Direction;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::generate::{Expect, Outgoing};

/// One accepted message, as the oracle sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Event {
    pub tenant: String,
    /// E.164
    pub phone: String,
    pub event_id: String,
    pub sent_at: DateTime<Utc>,
    pub channel: String,
    pub campaign: Option<String>,
    pub direction: Direction,
    pub text: String,
}

/// The expected `funnel_contacts` row of one contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedRow {
    pub tenant: String,
    pub phone: String,
    pub lead_at: Option<DateTime<Utc>>,
    pub channel: Option<String>,
    pub campaign: Option<String>,
    pub booking_at: Option<DateTime<Utc>>,
    pub transaction_at: Option<DateTime<Utc>>,
    pub transaction_value: Decimal,
    pub transaction_count: i64,
    pub first_message_at: DateTime<Utc>,
    pub last_message_at: DateTime<Utc>,
    pub message_count: i64,
}

/// Expected `funnel_stage_events` per tenant and stage: how many, and their value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageTotals {
    pub events: i64,
    pub value: Decimal,
}

/// What the tables must hold after the traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    /// By (tenant, phone)
    pub rows: BTreeMap<(String, String), ExpectedRow>,
    /// By (tenant, stage)
    pub stages: BTreeMap<(String, Stage), StageTotals>,
}

/// Why a generated message cannot be read as an event (a bug in the generator).
#[derive(Debug, thiserror::Error)]
#[error("message {index}: {detail}")]
pub struct EventError {
    pub index: usize,
    pub detail: String,
}

/// The events of the messages the API must accept, with their event ids (given, or derived as
/// the contract says).
pub fn events(messages: &[Outgoing]) -> Result<Vec<Event>, EventError> {
    let mut out = Vec::new();
    for (index, m) in messages.iter().enumerate() {
        if m.expect != Expect::Accept {
            continue;
        }
        let bad = |detail: String| EventError { index, detail };
        let field = |name: &str| {
            m.body
                .get(name)
                .and_then(serde_json::Value::as_str)
                .map(str::to_string)
        };
        let phone = m.contact.clone().ok_or_else(|| bad("no contact".into()))?;
        let sent_at = field("sent_at").ok_or_else(|| bad("no sent_at".into()))?;
        let sent_at = DateTime::parse_from_rfc3339(&sent_at)
            .map_err(|e| bad(format!("sent_at: {e}")))?
            .with_timezone(&Utc);
        let direction = match field("direction").as_deref() {
            None | Some("inbound") => Direction::Inbound,
            Some("outbound") => Direction::Outbound,
            Some(other) => return Err(bad(format!("direction {other}"))),
        };
        let text = field("text").ok_or_else(|| bad("no text".into()))?;
        let event_id = match field("event_id") {
            Some(id) => id,
            None => funnel_schemas::event_id::derive_event_id(
                &m.tenant,
                &phone,
                sent_at.timestamp_millis(),
                direction,
                &text,
            ),
        };
        out.push(Event {
            tenant: m.tenant.clone(),
            phone,
            event_id,
            sent_at,
            channel: field("channel")
                .ok_or_else(|| bad("no channel".into()))?
                .to_ascii_lowercase(),
            campaign: field("campaign"),
            direction,
            text,
        });
    }
    Ok(out)
}

/// The reference fold: the rows and stage totals of a set of events under `rules`.
pub fn expected(events: &[Event], rules: &Classifier) -> Expected {
    // Distinct by (tenant, event id); copies of one event are equal, and keeping the smallest
    // makes the result independent of order even if they were not.
    let mut distinct: BTreeMap<(&str, &str), &Event> = BTreeMap::new();
    for e in events {
        distinct
            .entry((&e.tenant, &e.event_id))
            .and_modify(|kept| {
                if e < *kept {
                    *kept = e;
                }
            })
            .or_insert(e);
    }
    let mut by_contact: BTreeMap<(&str, &str), Vec<&Event>> = BTreeMap::new();
    for e in distinct.values() {
        by_contact.entry((&e.tenant, &e.phone)).or_default().push(e);
    }
    let mut out = Expected::default();
    for ((tenant, phone), evs) in by_contact {
        let mut lead: Option<&Event> = None;
        let mut booking_at: Option<DateTime<Utc>> = None;
        let mut transaction_at: Option<DateTime<Utc>> = None;
        let mut value = Decimal::ZERO;
        let mut count = 0;
        for e in &evs {
            for hit in rules.classify(&e.text, &e.channel, e.direction) {
                let totals = out
                    .stages
                    .entry((tenant.to_string(), hit.stage))
                    .or_default();
                totals.events += 1;
                totals.value += hit.value;
                match hit.stage {
                    Stage::Lead => {
                        if lead.is_none_or(|l| (e.sent_at, &e.event_id) < (l.sent_at, &l.event_id))
                        {
                            lead = Some(e);
                        }
                    }
                    Stage::Booking => {
                        booking_at = Some(booking_at.map_or(e.sent_at, |b| b.min(e.sent_at)));
                    }
                    Stage::Transaction => {
                        transaction_at =
                            Some(transaction_at.map_or(e.sent_at, |t| t.min(e.sent_at)));
                        value += hit.value;
                        count += 1;
                    }
                }
            }
        }
        let times = evs.iter().map(|e| e.sent_at);
        let (Some(first), Some(last)) = (times.clone().min(), times.max()) else {
            continue;
        };
        out.rows.insert(
            (tenant.to_string(), phone.to_string()),
            ExpectedRow {
                tenant: tenant.to_string(),
                phone: phone.to_string(),
                lead_at: lead.map(|l| l.sent_at),
                channel: lead.map(|l| l.channel.clone()),
                campaign: lead.and_then(|l| l.campaign.clone()),
                booking_at,
                transaction_at,
                transaction_value: value,
                transaction_count: count,
                first_message_at: first,
                last_message_at: last,
                message_count: evs.len() as i64,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{generate, GenConfig, DEFAULT_RULES_CSV};
    use funnel_schemas::rules::rules_from_csv;
    use proptest::prelude::*;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    fn classifier() -> Classifier {
        Classifier::new(1, rules_from_csv(DEFAULT_RULES_CSV).unwrap()).unwrap()
    }

    fn sample_events() -> Vec<Event> {
        let traffic = generate(&GenConfig {
            seed: 11,
            contacts: 40,
            ..GenConfig::default()
        });
        events(&traffic.messages).unwrap()
    }

    #[test]
    fn a_hand_checked_contact() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let ev = |id: &str, t: &str, channel: &str, text: &str| Event {
            tenant: "default".into(),
            phone: "+6281234567890".into(),
            event_id: id.into(),
            sent_at: at(t),
            channel: channel.into(),
            campaign: (channel == "ads").then(|| "promo".to_string()),
            direction: Direction::Inbound,
            text: text.into(),
        };
        let events = vec![
            ev("b", "2026-11-02T10:00:00Z", "direct", "info promo"),
            ev("a", "2026-11-02T10:00:00Z", "ads", "harga berapa"),
            ev("c", "2026-11-03T10:00:00Z", "direct", "mau booking"),
            ev(
                "d",
                "2026-11-05T10:00:00Z",
                "direct",
                "sudah transfer 350rb",
            ),
            ev(
                "e",
                "2026-11-04T10:00:00Z",
                "direct",
                "sudah transfer Rp 1.500.000",
            ),
            ev(
                "e",
                "2026-11-04T10:00:00Z",
                "direct",
                "sudah transfer Rp 1.500.000",
            ),
            ev("f", "2026-11-01T09:00:00Z", "website", "halo"),
        ];
        let out = expected(&events, &classifier());
        let row = &out.rows[&("default".to_string(), "+6281234567890".to_string())];
        assert_eq!(row.lead_at, Some(at("2026-11-02T10:00:00Z")));
        assert_eq!(
            row.channel.as_deref(),
            Some("ads"),
            "tie: smallest event id"
        );
        assert_eq!(row.campaign.as_deref(), Some("promo"));
        assert_eq!(row.booking_at, Some(at("2026-11-03T10:00:00Z")));
        assert_eq!(row.transaction_at, Some(at("2026-11-04T10:00:00Z")));
        assert_eq!(row.transaction_value, Decimal::from(1_850_000));
        assert_eq!(row.transaction_count, 2, "the duplicate counts once");
        assert_eq!(row.first_message_at, at("2026-11-01T09:00:00Z"));
        assert_eq!(row.last_message_at, at("2026-11-05T10:00:00Z"));
        assert_eq!(row.message_count, 6);
        let lead = &out.stages[&("default".to_string(), Stage::Lead)];
        assert_eq!(lead.events, 2);
        let trx = &out.stages[&("default".to_string(), Stage::Transaction)];
        assert_eq!((trx.events, trx.value), (2, Decimal::from(1_850_000)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn any_permutation_and_duplication_gives_the_same_rows(seed: u64) {
            let events = sample_events();
            let rules = classifier();
            let want = expected(&events, &rules);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut shuffled = events.clone();
            for e in &events {
                for _ in 0..rng.random_range(0..3) {
                    shuffled.push(e.clone());
                }
            }
            shuffled.shuffle(&mut rng);
            prop_assert_eq!(expected(&shuffled, &rules), want);
        }
    }
}
