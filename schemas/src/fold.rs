//! The fold: a contact's funnel row as a pure function of the SET of its classified events.
//! `apply` is idempotent per event id and commutative, so arrival order, redelivery and
//! replay cannot change the row.
//!
//! What is kept per contact is bounded except for transactions: the earliest stage times, the
//! lead event, every transaction event id with its value (a sum over distinct events needs
//! them all), and the ids of messages received within the dedup window, by `received_at`.
//! Redeliveries and retried webhooks arrive within minutes to days of the original; a copy
//! arriving later than the window adds one to `message_count` (nothing else: times are minima
//! and maxima, and transaction ids are kept for ever). docs/exactly-once.md has the limits.

use std::collections::BTreeMap;

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
    /// Distinct messages.
    pub message_count: i64,
    /// Ids of the messages received within the dedup window, with their `received_at`.
    pub recent: BTreeMap<String, i64>,
    /// The latest `received_at` folded in: the window ends here.
    pub received_until: i64,
    pub rule_set_version: Option<i64>,
    /// The first touch by an ad (absent from states written before ads were kept).
    #[serde(default)]
    pub ad: Option<AdRef>,
}

fn min_opt(a: Option<i64>, b: i64) -> Option<i64> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl ContactState {
    /// Folds one event in. Returns false (and changes nothing) when the event id was already
    /// folded: a duplicate.
    pub fn apply(&mut self, ev: &Event, window_ms: i64) -> bool {
        let known = self.recent.contains_key(&ev.event_id)
            || self.transactions.contains_key(&ev.event_id)
            || self
                .lead
                .as_ref()
                .is_some_and(|l| l.event_id == ev.event_id);
        if known {
            return false;
        }
        self.message_count += 1;
        self.received_until = self.received_until.max(ev.received_at);
        let horizon = self.received_until.saturating_sub(window_ms);
        if ev.received_at >= horizon {
            self.recent.insert(ev.event_id.clone(), ev.received_at);
        }
        if self.recent.len() > 1 && self.recent.values().any(|&at| at < horizon) {
            self.recent.retain(|_, at| *at >= horizon);
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
            s.apply(e, WINDOW);
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
            s.message_count,
            s.rule_set_version,
            s.ad.clone(),
        )
    }

    proptest! {
        #[test]
        fn any_permutation_and_duplication_gives_the_same_row(
            events in prop::collection::vec(arb_event(), 0..30),
            seed in any::<u64>(),
            dups in prop::collection::vec((any::<prop::sample::Index>(), 0..WINDOW / 2), 0..10),
        ) {
            let events = canonical(events);
            let reference = row(&fold(&events));
            let mut shuffled = events.clone();
            for (d, later) in &dups {
                if !events.is_empty() {
                    // A copy received later (a retried webhook), within the dedup window.
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
        assert_eq!(s.message_count, 2);
        assert!(
            s.lead.is_none(),
            "a transaction without a lead keeps lead_at empty"
        );
    }

    #[test]
    fn the_dedup_window_bounds_the_ids_kept_and_transactions_stay_exact() {
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
        assert!(s.apply(&ev("chat-1", 0, vec![]), WINDOW));
        assert!(s.apply(&ev("pay-1", 10, vec![hit(Stage::Transaction, 500)]), WINDOW));
        assert!(
            !s.apply(&ev("chat-1", WINDOW - 1, vec![]), WINDOW),
            "a copy within the window is a duplicate"
        );
        // Much later traffic moves the window past chat-1 and pay-1.
        assert!(s.apply(&ev("chat-2", 3 * WINDOW, vec![]), WINDOW));
        assert_eq!(
            s.recent.keys().collect::<Vec<_>>(),
            ["chat-2"],
            "ids outside the window are dropped"
        );
        // A copy of the payment beyond the window is still recognised: transaction ids are
        // kept for ever, so revenue never doubles.
        assert!(!s.apply(
            &ev("pay-1", 3 * WINDOW, vec![hit(Stage::Transaction, 500)]),
            WINDOW
        ));
        assert_eq!(
            (s.transaction_value(), s.transactions.len()),
            (Decimal::from(500), 1)
        );
        // A copy of a plain message beyond the window counts again: the documented limit.
        assert!(s.apply(&ev("chat-1", 3 * WINDOW, vec![]), WINDOW));
        assert_eq!(s.message_count, 4);
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
