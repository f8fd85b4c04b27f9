//! funnel-loadtest: chat traffic for Funnel. For now the demo conversation `make up` sends;
//! the seeded generator with its reference fold grows here.

pub mod bench;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

/// A chat message as the HTTP API takes it.
#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub event_id: String,
    pub phone: String,
    pub channel: String,
    pub direction: &'static str,
    pub text: String,
    pub sent_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
}

const CHANNELS: [&str; 4] = ["ads", "campaign_blast", "website", "direct"];

/// A small funnel for `contacts` people: every contact asks (a lead), about six in ten book and
/// about half of those pay. Phones are written the ways people type them.
pub fn demo(contacts: u32, start: DateTime<Utc>) -> Vec<Message> {
    let mut out = Vec::new();
    for i in 0..contacts {
        let local = format!("812{:08}", 10_000_000 + i);
        let phone = match i % 3 {
            0 => format!("0{}-{}-{}", &local[..3], &local[3..7], &local[7..]),
            1 => format!("+62 {} {} {}", &local[..3], &local[3..7], &local[7..]),
            _ => format!("62{local}"),
        };
        let channel = CHANNELS[(i % 4) as usize];
        let at =
            |minutes: i64| (start + Duration::minutes(i64::from(i) * 7 + minutes)).to_rfc3339();
        let mut push = |n: u32, direction: &'static str, text: &str, minutes: i64| {
            out.push(Message {
                event_id: format!("demo-{i}-{n}"),
                phone: phone.clone(),
                channel: channel.to_string(),
                direction,
                text: text.to_string(),
                sent_at: at(minutes),
                campaign: (channel == "campaign_blast").then(|| "promo-akhir-tahun".to_string()),
            });
        };
        push(0, "inbound", "Halo kak, mau info promo paket umroh dong", 0);
        push(
            1,
            "outbound",
            "Halo! Paket mulai Rp 25.000.000, mau dijadwalkan konsultasi?",
            5,
        );
        let books = (i * 37) % 10 < 6;
        if books {
            push(2, "inbound", "Boleh, saya mau booking untuk Sabtu", 60);
        }
        if books && (i / 4) % 2 == 0 {
            push(
                3,
                "inbound",
                &format!("Sudah transfer Rp {}.500.000 ya kak", 1 + i % 5),
                180,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_is_deterministic_and_shaped() {
        let start = DateTime::parse_from_rfc3339("2026-11-01T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let a = demo(6, start);
        let booked = (0..6u32).filter(|i| (i * 37) % 10 < 6).count();
        let paid = (0..6u32)
            .filter(|i| (i * 37) % 10 < 6 && (i / 4) % 2 == 0)
            .count();
        assert_eq!(a.len(), 6 * 2 + booked + paid);
        assert!(booked > 0 && paid > 0 && paid < booked);
        let b = demo(6, start);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
    }
}
