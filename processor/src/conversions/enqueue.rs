//! Which conversions a folded batch leads to: its fresh stage events (a lead, a transaction) of
//! contacts whose first-touch ad has a click id and an intake channel, within 7 days of the
//! click. Pure; the sink writes them with the stage events.

use funnel_runtime::sink::{ConversionRow, StageEventRow};
use sha2::{Digest, Sha256};

use crate::pipeline::batch::Working;

/// How long after the ad click a conversion is attributed to it.
pub const WINDOW_MS: i64 = 7 * 24 * 3_600_000;

/// The currency of the values the money parser reads (Indonesian rupiah).
pub const CURRENCY: &str = "IDR";

/// A stable id: the same conversion always gets the same (it is also the `event_id` Meta
/// receives).
fn conversion_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(b"funnel-conversion-v1");
    for p in parts {
        h.update([0]);
        h.update(p.as_bytes());
    }
    format!("cv_{}", &hex::encode(h.finalize())[..32])
}

/// The conversions of a batch's fresh stage events, given the states after the batch.
pub fn of_batch(events: &[StageEventRow], working: &Working) -> Vec<ConversionRow> {
    let mut out = Vec::new();
    for e in events {
        let key = (e.source_partition, e.tenant.clone(), e.phone.clone());
        let Some(ad) = working.get(&key).and_then(|s| s.ad.as_ref()) else {
            continue;
        };
        let (Some(clid), Some(channel)) = (&ad.referral.ctwa_clid, &ad.referral.intake_channel_id)
        else {
            continue;
        };
        let at = e.occurred_at.timestamp_millis();
        if at < ad.at || at - ad.at > WINDOW_MS {
            continue;
        }
        let (event_name, id, value, currency) = match e.stage {
            // Once per contact, whichever lead event is fresh.
            "lead" => (
                "LeadSubmitted",
                conversion_id(&[&e.tenant, &e.phone, "LeadSubmitted"]),
                None,
                None,
            ),
            "transaction" => (
                "Purchase",
                conversion_id(&[&e.tenant, &e.event_id, "Purchase"]),
                Some(e.value),
                Some(CURRENCY),
            ),
            _ => continue,
        };
        if out.iter().any(|c: &ConversionRow| c.conversion_id == id) {
            continue;
        }
        out.push(ConversionRow {
            conversion_id: id,
            tenant: e.tenant.clone(),
            contact: e.phone.clone(),
            channel_id: channel.clone(),
            event_name,
            event_time: e.occurred_at,
            value,
            currency,
            ctwa_clid: clid.clone(),
            source_event_id: e.event_id.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use funnel_schemas::fold::{AdRef, ContactState, Referral};
    use rust_decimal::Decimal;

    const CLICK: i64 = 1_795_000_000_000;

    fn event(id: &str, stage: &'static str, at: i64, value: i64) -> StageEventRow {
        StageEventRow {
            tenant: "acme".into(),
            event_id: id.into(),
            phone: "+6281234567001".into(),
            stage,
            occurred_at: DateTime::from_timestamp_millis(at).unwrap(),
            channel: "ctwa".into(),
            value: Decimal::from(value),
            rule_id: "r".into(),
            rule_set_version: 1,
            source_partition: 3,
            source_offset: 1,
        }
    }

    fn working(clid: Option<&str>) -> Working {
        let state = ContactState {
            ad: Some(AdRef {
                at: CLICK,
                event_id: "wamid.1".into(),
                referral: Referral {
                    source_id: Some("ad-1".into()),
                    ctwa_clid: clid.map(str::to_string),
                    intake_channel_id: Some("ch_1".into()),
                    ..Referral::default()
                },
            }),
            ..ContactState::default()
        };
        [((3, "acme".to_string(), "+6281234567001".to_string()), state)].into()
    }

    #[test]
    fn a_lead_once_and_a_purchase_per_transaction_within_the_window() {
        let events = [
            event("wamid.1", "lead", CLICK, 0),
            event("wamid.1", "booking", CLICK, 0),
            event("wamid.2", "lead", CLICK + 10, 0),
            event("wamid.3", "transaction", CLICK + 3_600_000, 1_500_000),
            event("wamid.4", "transaction", CLICK + WINDOW_MS + 1, 200),
            event("wamid.5", "transaction", CLICK - 1, 300),
        ];
        let c = of_batch(&events, &working(Some("clid-1")));
        let names: Vec<_> = c
            .iter()
            .map(|c| (c.event_name, c.source_event_id.as_str()))
            .collect();
        assert_eq!(
            names,
            [("LeadSubmitted", "wamid.1"), ("Purchase", "wamid.3")]
        );
        assert_eq!(c[1].value, Some(Decimal::from(1_500_000)));
        assert_eq!(
            (
                c[1].currency,
                c[1].ctwa_clid.as_str(),
                c[1].channel_id.as_str()
            ),
            (Some("IDR"), "clid-1", "ch_1")
        );
        // Stable: the same events give the same ids (a rebuild enqueues nothing new).
        assert_eq!(
            of_batch(&events, &working(Some("clid-1")))[1].conversion_id,
            c[1].conversion_id
        );
        assert_ne!(c[0].conversion_id, c[1].conversion_id);
    }

    #[test]
    fn no_click_id_no_conversions() {
        let events = [
            event("wamid.1", "lead", CLICK, 0),
            event("wamid.3", "transaction", CLICK, 5),
        ];
        assert!(of_batch(&events, &working(None)).is_empty());
        assert!(of_batch(&events, &Working::default()).is_empty());
    }
}
