//! HTTP load for benchmarks: a closed loop of `concurrency` clients for `duration`, with the
//! latency of every request in an HdrHistogram, against the API (bearer token, chat message
//! bodies) or a WhatsApp channel's webhook (Meta-shaped payloads signed with the app secret);
//! and the bare endpoint the ingest API is compared with (parses the same JSON, answers 202,
//! no Kafka).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Report {
    pub requests: u64,
    pub messages: u64,
    pub non_2xx: u64,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub messages_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// One request body: a single message, or a batch of `batch` messages. Each message carries
/// an event id (as channel webhooks do); phones cycle over `contacts` contacts, as a day of
/// traffic repeats its contacts (0: every message from a new phone, the worst case for ingest's
/// phone cache).
pub fn body(batch: usize, seq: u64, contacts: u64) -> serde_json::Value {
    let msg = |i: u64| {
        let contact = if contacts == 0 { i } else { i % contacts };
        serde_json::json!({
            "event_id": format!("wamid.bench{i:012}"),
            "phone": format!("+62812{:07}", contact % 10_000_000),
            "channel": "ads",
            "text": "Halo kak, mau info promo paket umroh bulan depan dong, berapa harganya?",
            "sent_at": "2026-11-20T10:00:00+07:00",
            "campaign": "bench",
        })
    };
    if batch <= 1 {
        msg(seq)
    } else {
        serde_json::json!({ "messages": (0..batch as u64).map(|i| msg(seq * batch as u64 + i)).collect::<Vec<_>>() })
    }
}

/// Who the load is for.
#[derive(Debug, Clone)]
pub enum Target {
    /// The API: chat message bodies with this bearer token (if any).
    Api { token: Option<String> },
    /// A WhatsApp channel's webhook: payloads for this phone number id, signed with the app
    /// secret as Meta signs them.
    WhatsApp {
        app_secret: String,
        phone_number_id: String,
    },
}

/// A webhook payload of `batch` text messages, written the way Meta writes them (a `\/` in
/// the text, an escaped non-ASCII character).
pub fn whatsapp_body(batch: usize, seq: u64, contacts: u64, phone_number_id: &str) -> String {
    let messages: Vec<String> = (0..batch.max(1) as u64)
        .map(|i| {
            let n = seq * batch.max(1) as u64 + i;
            let contact = if contacts == 0 { n } else { n % contacts };
            format!(
                r#"{{"from":"62812{:07}","id":"wamid.bench{n:012}","timestamp":"1795000000","type":"text","text":{{"body":"Halo kak, mau info promo paket umroh bulan depan dong, berapa harganya? café https:\/\/x.id"}}}}"#,
                contact % 10_000_000
            )
        })
        .collect();
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"102290129340398","changes":[{{"value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550783881","phone_number_id":"{phone_number_id}"}},"messages":[{}]}},"field":"messages"}}]}}]}}"#,
        messages.join(",")
    )
}

fn signature(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub async fn run(
    url: String,
    target: Target,
    concurrency: usize,
    duration: Duration,
    batch: usize,
    contacts: u64,
) -> anyhow::Result<Report> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let url = Arc::new(url);
    let started = Instant::now();
    let deadline = started + duration;
    let workers = (0..concurrency).map(|w| {
        let client = client.clone();
        let url = url.clone();
        let target = target.clone();
        tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let (mut n, mut bad) = (0u64, 0u64);
            let mut seq = w as u64 * 1_000_000_000;
            while Instant::now() < deadline {
                seq += 1;
                let req = match &target {
                    Target::Api { token } => {
                        let req = client.post(url.as_str()).json(&body(batch, seq, contacts));
                        match token {
                            Some(t) => req.bearer_auth(t),
                            None => req,
                        }
                    }
                    Target::WhatsApp {
                        app_secret,
                        phone_number_id,
                    } => {
                        let body = whatsapp_body(batch, seq, contacts, phone_number_id);
                        client
                            .post(url.as_str())
                            .header("content-type", "application/json")
                            .header(
                                "x-hub-signature-256",
                                signature(app_secret, body.as_bytes()),
                            )
                            .body(body)
                    }
                };
                let t0 = Instant::now();
                let ok = req.send().await.is_ok_and(|r| r.status().is_success());
                let _ = hist.record(t0.elapsed().as_micros() as u64);
                n += 1;
                bad += u64::from(!ok);
            }
            (hist, n, bad)
        })
    });
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut requests, mut non_2xx) = (0, 0);
    for r in futures::future::join_all(workers).await {
        let (h, n, bad) = r?;
        hist.add(h)?;
        requests += n;
        non_2xx += bad;
    }
    let seconds = started.elapsed().as_secs_f64();
    let messages = requests * batch.max(1) as u64;
    Ok(Report {
        requests,
        messages,
        non_2xx,
        seconds,
        requests_per_second: requests as f64 / seconds,
        messages_per_second: messages as f64 / seconds,
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: hist.max() as f64 / 1000.0,
    })
}

#[derive(serde::Deserialize)]
#[allow(dead_code)] // parsed to cost what ingest's parse costs; the fields are not read
struct BareMessage {
    event_id: Option<String>,
    phone: String,
    channel: String,
    direction: Option<String>,
    text: String,
    sent_at: String,
    conversation_id: Option<String>,
    campaign: Option<String>,
    source: Option<String>,
    metadata: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
#[allow(dead_code)] // parsed, not read
enum BareBody {
    Batch { messages: Vec<BareMessage> },
    One(Box<BareMessage>),
}

/// The baseline: the same JSON parsed, 202 answered, nothing produced.
pub async fn bare_endpoint(addr: String) -> anyhow::Result<()> {
    use poem::{handler, http::StatusCode, post, web::Json, Route, Server};
    #[handler]
    async fn accept(Json(body): Json<BareBody>) -> (StatusCode, Json<serde_json::Value>) {
        let n = match body {
            BareBody::Batch { messages } => messages.len(),
            BareBody::One(_) => 1,
        };
        (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({"event_id": "bare", "partition": 0, "offset": n})),
        )
    }
    let app = Route::new()
        .at("/v1/messages", post(accept))
        .at("/v1/messages/batch", post(accept));
    Server::new(poem::listener::TcpListener::bind(addr))
        .run(app)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_payloads_are_what_the_channel_reads_and_signed_as_meta_signs() {
        let body = whatsapp_body(50, 7, 1000, "123");
        let region = funnel_schemas::phone::parse_region("ID").unwrap();
        let mapped = funnel_schemas::whatsapp::map(body.as_bytes(), "123", region).unwrap();
        assert_eq!(mapped.messages.len(), 50);
        assert!(mapped.messages[0].text.contains("café https://x.id"));
        let sig = signature("s3cret", body.as_bytes());
        assert!(funnel_schemas::whatsapp::signature_matches(
            b"s3cret",
            body.as_bytes(),
            Some(&sig)
        ));
    }
}
