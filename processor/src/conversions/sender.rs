//! The sender: every `poll`, leases due conversions and posts each to
//! `$FUNNEL_META_GRAPH_URL/<dataset_id>/events` (the Conversions API for Business Messaging),
//! one event per request, with its stable `event_id`. 2xx: sent. 429, 5xx, no answer and Meta's
//! transient error codes: tried again after a backoff that doubles (from the base, at most an
//! hour), parked after the last attempt. Any other refusal, an event older than the 7 days Meta
//! takes, a removed channel: parked with the reason (`funnel-processor conversions retry` sends
//! them again).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use funnel_runtime::seal::Sealer;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::store::{self, Due};
use crate::metrics::Metrics;

/// Meta's error codes that say "try again later" (throttling, temporary errors).
const TRANSIENT_CODES: [i64; 9] = [1, 2, 4, 17, 32, 341, 613, 80004, 80014];

/// Meta refuses events whose `event_time` is more than 7 days old.
const MAX_AGE: chrono::Duration = chrono::Duration::days(7);

#[derive(Debug, Clone)]
pub struct SenderSettings {
    pub graph_url: String,
    pub retry_base: Duration,
    pub max_attempts: i32,
    pub poll: Duration,
    /// How long a conversion being sent is this sender's; a request gives up after half of it.
    pub lease: Duration,
}

pub struct Sender {
    pool: PgPool,
    sealer: Sealer,
    http: reqwest::Client,
    settings: SenderSettings,
    metrics: Arc<Metrics>,
}

/// What became of one attempt.
#[derive(Debug, PartialEq)]
enum Outcome {
    Sent,
    Retry(String),
    Park(String),
}

impl Sender {
    pub fn new(
        pool: PgPool,
        sealer: Sealer,
        settings: SenderSettings,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        // A request ends well within its lease, so no other sender takes it meanwhile.
        let http = reqwest::Client::builder()
            .timeout(settings.lease / 2)
            .build()?;
        Ok(Sender {
            pool,
            sealer,
            http,
            settings,
            metrics,
        })
    }

    /// Sends until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            match self.next().await {
                // More may be due at once: go on without waiting.
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "conversions not sent this round"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.settings.poll) => {}
            }
        }
    }

    /// The next due conversion sent and its outcome recorded; false when none was due.
    async fn next(&self) -> Result<bool, sqlx::Error> {
        let Some(d) = store::lease(&self.pool, self.settings.lease.as_secs_f64()).await? else {
            return Ok(false);
        };
        // Crash tests (FAILPOINTS): enqueued and leased, not sent.
        fail::fail_point!("conversions-before-send", |_| std::process::abort());
        let m = &self.metrics.conversions;
        let id = &d.conversion_id;
        match self.attempt(&d).await {
            Outcome::Sent => {
                store::sent(&self.pool, id).await?;
                m.with_label_values(&["sent"]).inc();
            }
            Outcome::Retry(e) if d.attempts + 1 < self.settings.max_attempts => {
                let after = self.backoff(d.attempts);
                tracing::info!(conversion_id = %id, error = %e, after_s = after, "conversion to be retried");
                store::retry(&self.pool, id, after, &e).await?;
                m.with_label_values(&["retried"]).inc();
            }
            Outcome::Retry(e) => {
                let reason = format!("gave up after {} attempts: {e}", d.attempts + 1);
                tracing::warn!(conversion_id = %id, %reason, "conversion parked");
                store::park(&self.pool, id, &reason).await?;
                m.with_label_values(&["parked"]).inc();
            }
            Outcome::Park(reason) => {
                tracing::warn!(conversion_id = %id, %reason, "conversion parked");
                store::park(&self.pool, id, &reason).await?;
                m.with_label_values(&["parked"]).inc();
            }
        }
        Ok(true)
    }

    /// Seconds before attempt `attempts + 2`: the base, doubled per attempt, at most an hour.
    fn backoff(&self, attempts: i32) -> f64 {
        let base = self.settings.retry_base.as_secs_f64();
        (base * 2f64.powi(attempts.clamp(0, 20))).min(3600.0)
    }

    async fn attempt(&self, d: &Due) -> Outcome {
        if d.channel_removed {
            return Outcome::Park("the channel was removed".into());
        }
        let (Some(dataset), Some(sealed)) = (&d.dataset_id, &d.access_token_sealed) else {
            return Outcome::Park("the channel has no dataset or access token".into());
        };
        if Utc::now() - d.event_time > MAX_AGE {
            return Outcome::Park("the event is older than the 7 days Meta takes".into());
        }
        let Some(token) = self
            .sealer
            .open(sealed)
            .and_then(|t| String::from_utf8(t).ok())
        else {
            return Outcome::Park(
                "the channel's access token does not open under channel_key".into(),
            );
        };
        let url = format!(
            "{}/{dataset}/events",
            self.settings.graph_url.trim_end_matches('/')
        );
        // The token as Meta's examples pass it (a query parameter), and as a bearer header.
        let url = match reqwest::Url::parse_with_params(&url, &[("access_token", token.as_str())]) {
            Ok(u) => u,
            Err(e) => return Outcome::Park(format!("FUNNEL_META_GRAPH_URL is not a URL: {e}")),
        };
        let res = self
            .http
            .post(url)
            .bearer_auth(&token)
            .json(&body(d))
            .send()
            .await;
        match res {
            Err(e) => Outcome::Retry(format!(
                "no answer from {}: {}",
                self.settings.graph_url,
                e.without_url()
            )),
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                judge(status.as_u16(), &text)
            }
        }
    }
}

/// The request body of one conversion.
fn body(d: &Due) -> serde_json::Value {
    let mut event = json!({
        "event_name": d.event_name,
        "event_time": d.event_time.timestamp(),
        "action_source": "business_messaging",
        "messaging_channel": "whatsapp",
        "event_id": d.conversion_id,
        "user_data": {
            "whatsapp_business_account_id": d.waba_id,
            "ctwa_clid": d.ctwa_clid,
        },
    });
    if let (Some(value), Some(currency)) = (d.value, &d.currency) {
        let value: f64 = value.to_string().parse().unwrap_or(0.0);
        event["custom_data"] = json!({ "currency": currency, "value": value });
    }
    json!({ "data": [event], "partner_agent": "funnel" })
}

/// The outcome of Meta's answer: its status and body.
fn judge(status: u16, body: &str) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Sent;
    }
    let error: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let code = error["error"]["code"].as_i64();
    let message = error["error"]["message"]
        .as_str()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect::<String>();
    let said = match code {
        Some(c) => format!("HTTP {status}: {message} (code {c})"),
        None => format!("HTTP {status}"),
    };
    if status == 429 || status >= 500 || code.is_some_and(|c| TRANSIENT_CODES.contains(&c)) {
        Outcome::Retry(said)
    } else {
        Outcome::Park(said)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_judged_as_meta_means_them() {
        assert_eq!(judge(200, "{\"events_received\":1}"), Outcome::Sent);
        assert!(matches!(judge(500, ""), Outcome::Retry(_)));
        assert!(matches!(judge(503, "<html>"), Outcome::Retry(_)));
        assert!(matches!(judge(429, ""), Outcome::Retry(_)));
        let throttled = r#"{"error":{"message":"Calls to this api have exceeded the rate limit.","type":"OAuthException","code":613}}"#;
        assert!(matches!(judge(400, throttled), Outcome::Retry(_)));
        let invalid = r#"{"error":{"message":"Invalid parameter","type":"OAuthException","code":100,"error_subcode":2804066}}"#;
        assert_eq!(
            judge(400, invalid),
            Outcome::Park("HTTP 400: Invalid parameter (code 100)".into())
        );
        assert!(matches!(
            judge(401, r#"{"error":{"code":190,"message":"expired"}}"#),
            Outcome::Park(_)
        ));
    }

    #[test]
    fn the_body_is_the_conversions_api_event() {
        let d = Due {
            conversion_id: "cv_1".into(),
            event_name: "Purchase".into(),
            event_time: chrono::DateTime::from_timestamp(1_795_000_000, 0).unwrap(),
            value: Some(rust_decimal::Decimal::new(150_000_000, 2)),
            currency: Some("IDR".into()),
            ctwa_clid: "clid".into(),
            attempts: 0,
            dataset_id: Some("1".into()),
            waba_id: Some("102290129340398".into()),
            access_token_sealed: None,
            channel_removed: false,
        };
        let b = body(&d);
        let e = &b["data"][0];
        assert_eq!(e["event_time"], 1_795_000_000);
        assert_eq!(e["action_source"], "business_messaging");
        assert_eq!(e["messaging_channel"], "whatsapp");
        assert_eq!(e["event_id"], "cv_1");
        assert_eq!(e["user_data"]["ctwa_clid"], "clid");
        assert_eq!(
            e["user_data"]["whatsapp_business_account_id"],
            "102290129340398"
        );
        assert_eq!(e["custom_data"]["value"], 1_500_000.0);
        assert_eq!(e["custom_data"]["currency"], "IDR");
        let lead = Due {
            event_name: "LeadSubmitted".into(),
            value: None,
            currency: None,
            ..d
        };
        assert!(body(&lead)["data"][0].get("custom_data").is_none());
    }
}
