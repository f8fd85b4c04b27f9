//! The fold: a contact's funnel row as a pure function of the SET of its classified events.
//! `apply` is idempotent per event id and commutative, so arrival order, redelivery and
//! replay cannot change the row.
//!
//! What is kept per contact: the earliest stage times, the lead event and the first-touch ad,
//! every transaction event id with its value (a sum over distinct events needs them all), and
//! every message id as 8 bytes (the start of its SHA-256), sorted, so a copy arriving at any
//! time later, after any number of newer messages, is one event. Two ids of one contact whose
//! hashes collide would count once: with n messages the chance is about n²/2⁶⁵ (10⁻⁸ at a
//! million messages of one contact). docs/exactly-once.md has the limits.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::rules::{Stage, StageHit};
use crate::ChatMessage;

/// One classified message of one contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: String,
    /// Event time, Unix milliseconds.
    pub occurred_at: i64,
    /// When the message entered Funnel, Unix milliseconds: the clock of the dedup window.
    pub received_at: i64,
    pub channel: String,
    pub campaign: Option<String>,
    pub hits: Vec<StageHit>,
    pub rule_set_version: i64,
    /// The click-to-WhatsApp ad the message came from, if it carried a referral.
    #[serde(default)]
    pub referral: Option<Referral>,
}

/// A message's `referral`: the ad that brought the contact.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referral {
    pub source_id: Option<String>,
    pub source_type: Option<String>,
    pub source_url: Option<String>,
    pub headline: Option<String>,
    pub ctwa_clid: Option<String>,
    /// The intake channel the message came through: where conversions for this click go.
    #[serde(default)]
    pub intake_channel_id: Option<String>,
}

impl Referral {
    /// The referral of a message, when it has any of the referral's own fields.
    pub fn of(m: &ChatMessage) -> Option<Referral> {
        let r = Referral {
            source_id: m.referral_source_id.clone(),
            source_type: m.referral_source_type.clone(),
            source_url: m.referral_source_url.clone(),
            headline: m.referral_headline.clone(),
            ctwa_clid: m.ctwa_clid.clone(),
            intake_channel_id: None,
        };
        (r != Referral::default()).then(|| Referral {
            intake_channel_id: m.intake_channel_id.clone(),
            ..r
        })
    }
}

impl Event {
    /// The event of a decoded message with its classification.
    pub fn of(m: &ChatMessage, hits: Vec<StageHit>, rule_set_version: i64) -> Self {
        Event {
            event_id: m.event_id.clone(),
            occurred_at: m.sent_at,
            received_at: m.received_at,
            channel: m.channel.clone(),
            campaign: m.campaign.clone(),
            hits,
            rule_set_version,
            referral: Referral::of(m),
        }
    }
}

/// The contact's first touch by an ad: its earliest message with a referral (ties: the
/// smallest event id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdRef {
    pub at: i64,
    pub event_id: String,
    pub referral: Referral,
}

/// The lead event that defines the contact's channel and campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadRef {
    pub at: i64,
    pub event_id: String,
    pub channel: String,
    pub campaign: Option<String>,
}

/// What the fold keeps per contact (stored in RocksDB).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactState {
    pub lead: Option<LeadRef>,
    pub booking_at: Option<i64>,
    pub transaction_at: Option<i64>,
    /// Distinct transaction events and their values, kept for ever.
    pub transactions: BTreeMap<String, Decimal>,
    pub first_message_at: Option<i64>,
    pub last_message_at: Option<i64>,
    /// Every message folded, as [`id_hash`], sorted and distinct: `message_count` is its length.
    #[serde(with = "packed")]
    pub seen: Vec<u64>,
    pub rule_set_version: Option<i64>,
    /// The first touch by an ad (absent from states written before ads were kept).
    #[serde(default)]
    pub ad: Option<AdRef>,
}

/// A message id in 8 bytes: the start of its SHA-256 (stable across builds and machines).
pub fn id_hash(event_id: &str) -> u64 {
    let d = Sha256::digest(event_id.as_bytes());
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// The id set as one base64 string of little-endian u64s: 8 bytes per message (10.7 in the
/// JSON text), where a JSON array of numbers took about 20.
mod packed {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ids: &[u64], s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = ids.iter().flat_map(|h| h.to_le_bytes()).collect();
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = STANDARD.decode(text).map_err(serde::de::Error::custom)?;
        if bytes.len() % 8 != 0 {
            return Err(serde::de::Error::custom(
                "the id set is not a whole number of u64s",
            ));
        }
        Ok(bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }
}

fn min_opt(a: Option<i64>, b: i64) -> Option<i64> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl ContactState {
    /// Distinct messages folded.
    pub fn message_count(&self) -> i64 {
        self.seen.len() as i64
    }

    /// Folds one event in. Returns false (and changes nothing) when the event id was already
    /// folded: a duplicate, however late it arrives.
    pub fn apply(&mut self, ev: &Event) -> bool {
        let h = id_hash(&ev.event_id);
        match self.seen.binary_search(&h) {
            Ok(_) => return false,
            Err(at) => self.seen.insert(at, h),
        }
        self.first_message_at = min_opt(self.first_message_at, ev.occurred_at);
        self.last_message_at = Some(
            self.last_message_at
                .map_or(ev.occurred_at, |l| l.max(ev.occurred_at)),
        );
        // The version of the rules behind the row: the highest among the events that reached
        // a stage (a message nothing matched decides nothing, and a rebuild cannot know which
        // rules it was read with).
        if !ev.hits.is_empty() {
            self.rule_set_version = Some(
                self.rule_set_version
                    .map_or(ev.rule_set_version, |v| v.max(ev.rule_set_version)),
            );
        }
        if let Some(referral) = &ev.referral {
            let earlier = self.ad.as_ref().is_none_or(|a| {
                (ev.occurred_at, ev.event_id.as_str()) < (a.at, a.event_id.as_str())
            });
            if earlier {
                self.ad = Some(AdRef {
                    at: ev.occurred_at,
                    event_id: ev.event_id.clone(),
                    referral: referral.clone(),
                });
            }
        }
        for hit in &ev.hits {
            match hit.stage {
                Stage::Lead => {
                    let earlier = match &self.lead {
                        None => true,
                        Some(l) => {
                            (ev.occurred_at, ev.event_id.as_str()) < (l.at, l.event_id.as_str())
                        }
                    };
                    if earlier {
                        self.lead = Some(LeadRef {
                            at: ev.occurred_at,
                            event_id: ev.event_id.clone(),
                            channel: ev.channel.clone(),
                            campaign: ev.campaign.clone(),
                        });
                    }
                }
                Stage::Booking => self.booking_at = min_opt(self.booking_at, ev.occurred_at),
                Stage::Transaction => {
                    self.transaction_at = min_opt(self.transaction_at, ev.occurred_at);
                    self.transactions.insert(ev.event_id.clone(), hit.value);
                }
            }
        }
        true
    }

    pub fn transaction_value(&self) -> Decimal {
        self.transactions.values().copied().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hit(stage: Stage, value: i64) -> StageHit {
        StageHit {
            stage,
            rule_id: format!("r-{}", stage.as_str()),
            value: Decimal::from(value),
        }
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        (
            0u8..20,
            0i64..1_000,
            prop::sample::select(vec!["ads", "website", "direct"]),
            prop::option::of(prop::sample::select(vec!["c1", "c2"])),
            any::<(bool, bool, bool)>(),
            0i64..5_000_000,
            0i64..WINDOW / 2,
            prop::option::of(prop::sample::select(vec!["ad-1", "ad-2", "ad-3"])),
        )
            .prop_map(
                |(id, at, channel, campaign, (l, b, t), value, received_at, ad)| {
                    let mut hits = vec![];
                    if l {
                        hits.push(hit(Stage::Lead, 0));
                    }
                    if b {
                        hits.push(hit(Stage::Booking, 0));
                    }
                    if t {
                        hits.push(hit(Stage::Transaction, value));
                    }
                    // The event id determines the event: same id, same content.
                    Event {
                        event_id: format!("e{id}"),
                        occurred_at: at + i64::from(id) * 7,
                        received_at,
                        channel: channel.to_string(),
                        campaign: campaign.map(str::to_string),
                        hits,
                        rule_set_version: 1,
                        referral: ad.map(|ad| Referral {
                            source_id: Some(ad.to_string()),
                            source_type: Some("ad".into()),
                            source_url: Some(format!("https://fb.me/{ad}")),
                            headline: Some(format!("headline of {ad}")),
                            ctwa_clid: Some(format!("clid-{id}")),
                            intake_channel_id: Some("ch_1".into()),
                        }),
                    }
                },
            )
    }

    /// The same event id always carries the same content (a redelivery): keep the first copy.
    fn canonical(events: Vec<Event>) -> Vec<Event> {
        let mut by_id = BTreeMap::new();
        for e in events {
            by_id.entry(e.event_id.clone()).or_insert(e);
        }
        by_id.into_values().collect()
    }

    const WINDOW: i64 = 1_000_000;

    fn fold(events: &[Event]) -> ContactState {
        let mut s = ContactState::default();
        for e in events {
            s.apply(e);
        }
        s
    }

    /// The columns of the contact's row: what must not depend on order or duplicates (the
    /// dedup bookkeeping may).
    type Row = (
        Option<LeadRef>,
        Option<i64>,
        Option<i64>,
        Decimal,
        usize,
        Option<i64>,
        Option<i64>,
        i64,
        Option<i64>,
        Option<AdRef>,
    );

    fn row(s: &ContactState) -> Row {
        (
            s.lead.clone(),
            s.booking_at,
            s.transaction_at,
            s.transaction_value(),
            s.transactions.len(),
            s.first_message_at,
            s.last_message_at,
            s.message_count(),
            s.rule_set_version,
            s.ad.clone(),
        )
    }

    proptest! {
        #[test]
        fn any_permutation_and_duplication_gives_the_same_row(
            events in prop::collection::vec(arb_event(), 0..30),
            seed in any::<u64>(),
            dups in prop::collection::vec((any::<prop::sample::Index>(), 0..i64::MAX / 4), 0..10),
        ) {
            let events = canonical(events);
            let reference = row(&fold(&events));
            let mut shuffled = events.clone();
            for (d, later) in &dups {
                if !events.is_empty() {
                    // A copy received later (a retried webhook, an import of old messages), at
                    // any lateness.
                    let mut copy = d.get(&events).clone();
                    copy.received_at += later;
                    shuffled.push(copy);
                }
            }
            // Deterministic shuffle from the seed.
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            prop_assert_eq!(row(&fold(&shuffled)), reference);
        }

        /// Copies arriving after any number of newer messages are still one event each.
        #[test]
        fn copies_after_any_number_of_newer_messages_count_once(
            events in prop::collection::vec(arb_event(), 1..30),
            newer in 0usize..3_000,
            copies in prop::collection::vec(any::<prop::sample::Index>(), 1..10),
        ) {
            let events = canonical(events);
            let fresh: Vec<Event> = (0..newer)
                .map(|i| Event { event_id: format!("newer-{i}"), received_at: WINDOW * 1_000 + i as i64, ..events[0].clone() })
                .collect();
            let all: Vec<Event> = events.iter().chain(&fresh).cloned().collect();
            let reference = row(&fold(&all));
            let mut arrival = all.clone();
            arrival.extend(copies.iter().map(|c| {
                let mut copy = c.get(&events).clone();
                copy.received_at += WINDOW * 10_000;
                copy
            }));
            prop_assert_eq!(row(&fold(&arrival)), reference);
        }
    }

    #[test]
    fn earliest_lead_wins_and_ties_go_to_the_smallest_id() {
        let ev = |id: &str, at: i64, ch: &str| Event {
            event_id: id.into(),
            occurred_at: at,
            received_at: at,
            channel: ch.into(),
            campaign: None,
            hits: vec![hit(Stage::Lead, 0)],
            rule_set_version: 1,
            referral: None,
        };
        let s = fold(&[ev("b", 10, "web"), ev("a", 10, "ads"), ev("c", 5, "direct")]);
        assert_eq!(s.lead.as_ref().unwrap().channel, "direct");
        let s = fold(&[ev("b", 10, "web"), ev("a", 10, "ads")]);
        assert_eq!(s.lead.as_ref().unwrap().event_id, "a");
    }

    #[test]
    fn transactions_sum_distinct_events_and_count_without_value() {
        let ev = |id: &str, v: i64| Event {
            event_id: id.into(),
            occurred_at: 1,
            received_at: 1,
            channel: "direct".into(),
            campaign: None,
            hits: vec![hit(Stage::Transaction, v)],
            rule_set_version: 1,
            referral: None,
        };
        let s = fold(&[ev("t1", 100), ev("t2", 0), ev("t1", 100)]);
        assert_eq!(s.transactions.len(), 2);
        assert_eq!(s.transaction_value(), Decimal::from(100));
        assert_eq!(s.message_count(), 2);
        assert!(
            s.lead.is_none(),
            "a transaction without a lead keeps lead_at empty"
        );
    }

    #[test]
    fn a_copy_counts_once_however_late_and_the_state_keeps_8_bytes_a_message() {
        let ev = |id: &str, received_at: i64, hits: Vec<StageHit>| Event {
            event_id: id.into(),
            occurred_at: 1_000,
            received_at,
            channel: "direct".into(),
            campaign: None,
            hits,
            rule_set_version: 1,
            referral: None,
        };
        let mut s = ContactState::default();
        assert!(s.apply(&ev("chat-1", 0, vec![])));
        assert!(s.apply(&ev("pay-1", 10, vec![hit(Stage::Transaction, 500)])));
        // Thousands of newer messages, a year of traffic later.
        for i in 0..5_000 {
            assert!(s.apply(&ev(&format!("later-{i}"), 365 * 86_400_000, vec![])));
        }
        assert!(
            !s.apply(&ev("chat-1", 400 * 86_400_000, vec![])),
            "a very late copy is one event"
        );
        assert!(!s.apply(&ev(
            "pay-1",
            400 * 86_400_000,
            vec![hit(Stage::Transaction, 500)]
        )));
        assert_eq!(s.message_count(), 5_002);
        assert_eq!(
            (s.transaction_value(), s.transactions.len()),
            (Decimal::from(500), 1)
        );
        // 8 bytes per message in the state, about 10.7 in its stored (JSON, base64) form.
        let stored = serde_json::to_string(&s).unwrap();
        let per_message = stored.len() as f64 / 5_002.0;
        assert!(
            (10.0..11.5).contains(&per_message),
            "{per_message} bytes a message"
        );
        assert_eq!(serde_json::from_str::<ContactState>(&stored).unwrap(), s);
    }

    #[test]
    fn the_first_ad_touch_is_the_earliest_referral_ties_to_the_smallest_id() {
        let ev = |id: &str, at: i64, ad: Option<&str>| Event {
            event_id: id.into(),
            occurred_at: at,
            received_at: at,
            channel: "ctwa".into(),
            campaign: None,
            hits: vec![],
            rule_set_version: 1,
            referral: ad.map(|ad| Referral {
                source_id: Some(ad.into()),
                ctwa_clid: Some(format!("clid-{id}")),
                ..Referral::default()
            }),
        };
        let s = fold(&[
            ev("m1", 5, None),
            ev("b", 10, Some("ad-b")),
            ev("a", 10, Some("ad-a")),
        ]);
        let ad = s.ad.unwrap();
        assert_eq!((ad.at, ad.event_id.as_str()), (10, "a"));
        assert_eq!(ad.referral.source_id.as_deref(), Some("ad-a"));
        let s = fold(&[ev("b", 10, Some("ad-b")), ev("z", 3, Some("ad-z"))]);
        assert_eq!(s.ad.unwrap().referral.ctwa_clid.as_deref(), Some("clid-z"));
        assert!(fold(&[ev("m", 1, None)]).ad.is_none(), "no referral, no ad");
    }

    #[test]
    fn a_state_stored_before_ads_were_kept_reads_without_one() {
        let mut old = serde_json::to_value(ContactState::default()).unwrap();
        old.as_object_mut().unwrap().remove("ad");
        let s: ContactState = serde_json::from_value(old).unwrap();
        assert_eq!(s.ad, None);
    }
}
