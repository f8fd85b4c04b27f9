//! `funnel-loadtest send`: a generated traffic to the ingest API (single messages or batches)
//! or straight to Kafka (the same validation, Avro, registry and partitioner as the API).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use funnel_runtime::settings::KafkaSettings;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

use crate::generate::{Expect, Outgoing};

/// Where the traffic goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// `POST /v1/messages`, one message per request
    Http { url: String },
    /// `POST /v1/messages/batch`, up to `size` consecutive messages of one tenant per request
    Batch { url: String, size: usize },
    /// Produced to the topic; invalid messages are refused here, as the API would
    Kafka(Box<KafkaSettings>),
}

#[derive(Debug, Clone)]
pub struct SendOptions {
    pub target: Target,
    /// Bearer token per tenant (HTTP)
    pub tokens: BTreeMap<String, String>,
    /// Requests per second (0: as fast as the concurrency allows)
    pub rate: f64,
    /// Stop starting requests after this long
    pub duration: Option<Duration>,
    pub concurrency: usize,
    /// Retries of a request answered 503 (or not answered), honouring `Retry-After`
    pub retries: u32,
    pub progress: bool,
}

/// What happened, per message.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SendReport {
    pub requests: u64,
    pub messages: u64,
    /// Messages accepted (202, or acknowledged by the broker)
    pub accepted: u64,
    /// Messages refused as invalid (4xx, or refused before producing)
    pub rejected: u64,
    /// Messages lost to 5xx or transport errors after every retry
    pub failed: u64,
    pub retries: u64,
    /// Messages the dataset expected to be accepted and were refused, or the other way round
    pub unexpected: u64,
    pub status_2xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub seconds: f64,
    pub messages_per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl SendReport {
    pub fn summary(&self) -> String {
        format!(
            "{} messages in {} requests over {:.1}s ({:.0} msg/s): {} accepted, {} rejected, {} failed, {} unexpected; HTTP 2xx {} 4xx {} 5xx {}, {} retries; latency p50 {:.1} ms p90 {:.1} ms p99 {:.1} ms max {:.1} ms",
            self.messages,
            self.requests,
            self.seconds,
            self.messages_per_second,
            self.accepted,
            self.rejected,
            self.failed,
            self.unexpected,
            self.status_2xx,
            self.status_4xx,
            self.status_5xx,
            self.retries,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms
        )
    }
}

/// Consecutive messages of one tenant, sent in one request.
fn requests(messages: &[Outgoing], target: &Target) -> Vec<std::ops::Range<usize>> {
    let size = match target {
        Target::Batch { size, .. } => (*size).max(1),
        _ => 1,
    };
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=messages.len() {
        if i == messages.len() || i - start == size || messages[i].tenant != messages[start].tenant
        {
            out.push(start..i);
            start = i;
        }
    }
    out
}

enum Sender {
    Http(reqwest::Client),
    Kafka {
        producer: FutureProducer,
        topic: String,
        schema_id: u32,
        region: funnel_schemas::phone::Region,
    },
}

struct Outcome {
    accepted: Vec<bool>,
    status: Option<u16>,
    retries: u64,
    failed: bool,
}

/// Sends `messages` in order (concurrent requests may overtake each other, as clients do).
pub async fn send(messages: &[Outgoing], opts: &SendOptions) -> anyhow::Result<SendReport> {
    let sender = Arc::new(match &opts.target {
        Target::Http { .. } | Target::Batch { .. } => Sender::Http(
            reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        ),
        Target::Kafka(kafka) => Sender::Kafka {
            producer: funnel_runtime::kafka::producer_config(kafka)?
                .set("linger.ms", "5")
                .create()
                .context("Kafka producer")?,
            topic: kafka.topic_messages.clone(),
            schema_id: funnel_runtime::registry::register_schema(kafka).await?,
            region: funnel_schemas::phone::parse_region("ID").map_err(anyhow::Error::msg)?,
        },
    });
    let ranges = Arc::new(requests(messages, &opts.target));
    let messages: Arc<Vec<Outgoing>> = Arc::new(messages.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let report = Arc::new(Mutex::new(SendReport::default()));
    let bar = if opts.progress {
        let bar = ProgressBar::new(messages.len() as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} messages ({per_sec}, eta {eta}) {msg}",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..opts.concurrency.max(1) {
        let (sender, ranges, messages, next, hist, report, bar, opts) = (
            sender.clone(),
            ranges.clone(),
            messages.clone(),
            next.clone(),
            hist.clone(),
            report.clone(),
            bar.clone(),
            opts.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(range) = ranges.get(k).cloned() else {
                    break;
                };
                if opts.duration.is_some_and(|d| started.elapsed() >= d) {
                    break;
                }
                if opts.rate > 0.0 {
                    // Open loop: request k is due at k / rate, whatever the answers take.
                    let due = started + Duration::from_secs_f64(k as f64 / opts.rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let batch = &messages[range.clone()];
                let t = Instant::now();
                let outcome = send_one(&sender, batch, &opts).await;
                let micros = t.elapsed().as_micros() as u64;
                if let Ok(mut h) = hist.lock() {
                    let _ = h.record(micros.max(1));
                }
                if let Ok(mut r) = report.lock() {
                    r.requests += 1;
                    r.messages += batch.len() as u64;
                    r.retries += outcome.retries;
                    match outcome.status {
                        Some(200..=299) => r.status_2xx += 1,
                        Some(400..=499) => r.status_4xx += 1,
                        Some(500..=599) => r.status_5xx += 1,
                        _ => {}
                    }
                    for (m, ok) in batch.iter().zip(&outcome.accepted) {
                        if outcome.failed {
                            r.failed += 1;
                            continue;
                        }
                        if *ok {
                            r.accepted += 1;
                        } else {
                            r.rejected += 1;
                        }
                        if *ok != (m.expect == Expect::Accept) {
                            r.unexpected += 1;
                        }
                    }
                }
                bar.inc(batch.len() as u64);
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    if let Sender::Kafka { producer, .. } = &*sender {
        rdkafka::producer::Producer::flush(producer, Duration::from_secs(30))?;
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let mut r = report
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let h = hist.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    r.seconds = seconds;
    r.messages_per_second = r.messages as f64 / seconds.max(1e-9);
    r.p50_ms = ms(0.5);
    r.p90_ms = ms(0.9);
    r.p99_ms = ms(0.99);
    r.max_ms = h.max() as f64 / 1000.0;
    Ok(r)
}

async fn send_one(sender: &Sender, batch: &[Outgoing], opts: &SendOptions) -> Outcome {
    match sender {
        Sender::Http(client) => send_http(client, batch, opts).await,
        Sender::Kafka {
            producer,
            topic,
            schema_id,
            region,
        } => send_kafka(producer, topic, *schema_id, *region, &batch[0]).await,
    }
}

async fn send_http(client: &reqwest::Client, batch: &[Outgoing], opts: &SendOptions) -> Outcome {
    let tenant = &batch[0].tenant;
    let token = opts.tokens.get(tenant).or_else(|| opts.tokens.get("*"));
    let (url, body) = match &opts.target {
        Target::Batch { url, .. } => (
            format!("{}/v1/messages/batch", url.trim_end_matches('/')),
            serde_json::json!({"messages": batch.iter().map(|m| &m.body).collect::<Vec<_>>()}),
        ),
        Target::Http { url } => (
            format!("{}/v1/messages", url.trim_end_matches('/')),
            batch[0].body.clone(),
        ),
        Target::Kafka(_) => unreachable!("Kafka targets are sent by send_kafka"),
    };
    let batch_mode = matches!(opts.target, Target::Batch { .. });
    let mut retries = 0;
    loop {
        let mut req = client.post(&url).json(&body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let res = req.send().await;
        // 503 (the broker) and 429 (the tenant's rate limit) say when to come back.
        let retry_after = match &res {
            Ok(r) if matches!(r.status().as_u16(), 503 | 429) => Some(
                r.headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1)
                    .min(5),
            ),
            Ok(_) => None,
            Err(_) => Some(1),
        };
        if let Some(wait) = retry_after {
            if retries < opts.retries {
                retries += 1;
                tokio::time::sleep(Duration::from_secs(wait)).await;
                continue;
            }
            let status = res.ok().map(|r| r.status().as_u16());
            return Outcome {
                accepted: vec![false; batch.len()],
                status,
                retries: u64::from(retries),
                failed: true,
            };
        }
        let Ok(res) = res else {
            unreachable!("transport errors are retried above")
        };
        let status = res.status().as_u16();
        let accepted = if batch_mode && (200..300).contains(&status) {
            let body: serde_json::Value = res.json().await.unwrap_or_default();
            let results = body["results"].as_array().cloned().unwrap_or_default();
            (0..batch.len())
                .map(|i| results.get(i).and_then(|r| r["status"].as_str()) == Some("accepted"))
                .collect()
        } else {
            vec![status == 202; batch.len()]
        };
        return Outcome {
            accepted,
            status: Some(status),
            retries: u64::from(retries),
            failed: status >= 500,
        };
    }
}

async fn send_kafka(
    producer: &FutureProducer,
    topic: &str,
    schema_id: u32,
    region: funnel_schemas::phone::Region,
    m: &Outgoing,
) -> Outcome {
    let refused = |failed| Outcome {
        accepted: vec![false],
        status: None,
        retries: 0,
        failed,
    };
    // The API's own validation: what it would refuse is not produced.
    let Ok(raw) = funnel_schemas::validate::from_json(m.body.clone()) else {
        return refused(false);
    };
    let Ok(msg) = funnel_schemas::validate::validate(
        raw,
        &m.tenant,
        region,
        funnel_schemas::validate::Limits::default(),
        chrono::Utc::now(),
    ) else {
        return refused(false);
    };
    let Ok(value) = funnel_schemas::encode(schema_id, &msg) else {
        return refused(true);
    };
    let record = FutureRecord::to(topic)
        .key(msg.phone.as_bytes())
        .payload(&value);
    match producer.send(record, Duration::from_secs(30)).await {
        Ok(_) => Outcome {
            accepted: vec![true],
            status: None,
            retries: 0,
            failed: false,
        },
        Err(_) => refused(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tenant: &str) -> Outgoing {
        Outgoing {
            tenant: tenant.into(),
            expect: Expect::Accept,
            invalid: None,
            contact: None,
            body: serde_json::json!({}),
        }
    }

    #[test]
    fn batches_hold_one_tenant_and_at_most_size_messages() {
        let ms: Vec<Outgoing> = ["a", "a", "a", "b", "a", "a"]
            .iter()
            .map(|t| msg(t))
            .collect();
        let batch = Target::Batch {
            url: String::new(),
            size: 2,
        };
        assert_eq!(requests(&ms, &batch), vec![0..2, 2..3, 3..4, 4..6]);
        let single = Target::Http { url: String::new() };
        assert_eq!(requests(&ms, &single).len(), 6);
        assert!(requests(&[], &single).is_empty());
    }
}
