//! The funnel tables' writes: one transaction per batch holding the batch's contact rows, its
//! stage events, the conversions they lead to (the outbox `funnel_conversions`) and, per
//! partition, the next offset, written only if the stored offset is still
//! the one the batch started from (a zombie whose partitions moved can never apply a batch);
//! and what a rebuild or a replay reads back (stored offsets, committed classifications). The
//! processor writes through it, and `make bench-processor` measures the same writes bare.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;

use funnel_schemas::fold::ContactState;
use funnel_schemas::rules::{Stage, StageHit};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Another consumer moved the partition's offset: drop the batch and re-read the offset.
    #[error("offset of {topic}/{partition} is no longer {expected:?}: batch fenced")]
    Fenced {
        topic: String,
        partition: i32,
        expected: Option<i64>,
    },
    /// Transient: retry with backoff.
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
}

pub struct ContactRow<'a> {
    pub tenant: &'a str,
    pub phone: &'a str,
    pub state: &'a ContactState,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StageEventRow {
    pub tenant: String,
    pub event_id: String,
    pub phone: String,
    pub stage: &'static str,
    pub occurred_at: DateTime<Utc>,
    pub channel: String,
    pub value: Decimal,
    pub rule_id: String,
    pub rule_set_version: i64,
    pub source_partition: i32,
    pub source_offset: i64,
}

impl StageEventRow {
    /// The row of one stage a message reached, read from `partition` at `offset`.
    pub fn of(
        m: &funnel_schemas::ChatMessage,
        hit: &StageHit,
        rule_set_version: i64,
        partition: i32,
        offset: i64,
    ) -> Self {
        StageEventRow {
            tenant: m.tenant.clone(),
            event_id: m.event_id.clone(),
            phone: m.phone.clone(),
            stage: hit.stage.as_str(),
            occurred_at: millis(m.sent_at).unwrap_or_default(),
            channel: m.channel.clone(),
            value: hit.value,
            rule_id: hit.rule_id.clone(),
            rule_set_version,
            source_partition: partition,
            source_offset: offset,
        }
    }
}

/// A conversion to send to Meta, enqueued with the stage event it follows from. The id is
/// stable: enqueueing it again is a no-op.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversionRow {
    pub conversion_id: String,
    pub tenant: String,
    pub contact: String,
    pub channel_id: String,
    pub event_name: &'static str,
    pub event_time: DateTime<Utc>,
    pub value: Option<Decimal>,
    pub currency: Option<&'static str>,
    pub ctwa_clid: String,
    pub source_event_id: String,
}

/// The offset move of one partition in a batch: from the stored `from` (None: no row yet) to
/// `to`, the next offset to read. `start` is the batch's first record of the partition (stored
/// as `first_offset` when the row is created).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetMove {
    pub partition: i32,
    pub from: Option<i64>,
    pub start: i64,
    pub to: i64,
}

pub fn millis(t: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(t)
}

/// The next offset stored for one partition (None: the sink never wrote it).
pub async fn stored_offset(
    pool: &PgPool,
    group: &str,
    topic: &str,
    partition: i32,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT next_offset FROM funnel_sink_offsets WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
    )
    .bind(group)
    .bind(topic)
    .bind(partition)
    .fetch_optional(pool)
    .await
}

pub async fn commit_batch(
    pool: &PgPool,
    group: &str,
    topic: &str,
    contacts: &[ContactRow<'_>],
    events: &[StageEventRow],
    offsets: &[OffsetMove],
    conversions: &[ConversionRow],
) -> Result<(), SinkError> {
    let mut tx = pool.begin().await?;
    // Offsets first: a fenced batch fails before it writes anything else.
    for m in offsets {
        let moved = match m.from {
            Some(from) => sqlx::query(
                "UPDATE funnel_sink_offsets SET next_offset = $4, updated_at = now()
                  WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND next_offset = $5",
            )
            .bind(group)
            .bind(topic)
            .bind(m.partition)
            .bind(m.to)
            .bind(from)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            None => sqlx::query(
                "INSERT INTO funnel_sink_offsets (consumer_group, topic, partition, next_offset, first_offset)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(group)
            .bind(topic)
            .bind(m.partition)
            .bind(m.to)
            .bind(m.start)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
        };
        if moved != 1 {
            return Err(SinkError::Fenced {
                topic: topic.into(),
                partition: m.partition,
                expected: m.from,
            });
        }
    }
    if !contacts.is_empty() {
        upsert_contacts(&mut tx, contacts).await?;
    }
    if !events.is_empty() {
        insert_stage_events(&mut tx, topic, events).await?;
    }
    if !conversions.is_empty() {
        enqueue_conversions(&mut tx, conversions).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Only for channels of the same tenant that send conversions (a dataset is set): a record
/// produced straight to Kafka cannot name another tenant's channel.
async fn enqueue_conversions(
    tx: &mut sqlx::PgConnection,
    rows: &[ConversionRow],
) -> Result<(), sqlx::Error> {
    let col = |f: fn(&ConversionRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO public.funnel_conversions (conversion_id, tenant, contact, channel_id, event_name,
             event_time, value, currency, ctwa_clid, source_event_id)
         SELECT t.conversion_id, t.tenant, t.contact, t.channel_id, t.event_name, t.event_time,
                t.value, t.currency, t.ctwa_clid, t.source_event_id
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                $7::numeric[], $8::text[], $9::text[], $10::text[])
             AS t(conversion_id, tenant, contact, channel_id, event_name, event_time, value, currency,
                  ctwa_clid, source_event_id)
           JOIN public.funnel_channels c
             ON c.channel_id = t.channel_id AND c.tenant = t.tenant
            AND c.dataset_id IS NOT NULL AND c.removed_at IS NULL
         ON CONFLICT (conversion_id) DO NOTHING",
    )
    .bind(col(|r| r.conversion_id.clone()))
    .bind(col(|r| r.tenant.clone()))
    .bind(col(|r| r.contact.clone()))
    .bind(col(|r| r.channel_id.clone()))
    .bind(col(|r| r.event_name.to_string()))
    .bind(rows.iter().map(|r| r.event_time).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.value).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.currency).collect::<Vec<_>>())
    .bind(col(|r| r.ctwa_clid.clone()))
    .bind(col(|r| r.source_event_id.clone()))
    .execute(tx)
    .await?;
    Ok(())
}

async fn upsert_contacts(
    tx: &mut sqlx::PgConnection,
    contacts: &[ContactRow<'_>],
) -> Result<(), sqlx::Error> {
    let n = contacts.len();
    let mut tenant = Vec::with_capacity(n);
    let mut phone = Vec::with_capacity(n);
    let mut lead_at = Vec::with_capacity(n);
    let mut channel = Vec::with_capacity(n);
    let mut campaign = Vec::with_capacity(n);
    let mut lead_event_id = Vec::with_capacity(n);
    let mut booking_at = Vec::with_capacity(n);
    let mut transaction_at = Vec::with_capacity(n);
    let mut value = Vec::with_capacity(n);
    let mut tcount = Vec::with_capacity(n);
    let mut first = Vec::with_capacity(n);
    let mut last = Vec::with_capacity(n);
    let mut mcount = Vec::with_capacity(n);
    let mut version = Vec::with_capacity(n);
    let mut ad_at = Vec::with_capacity(n);
    let mut ad_event_id = Vec::with_capacity(n);
    let mut ad_source_id = Vec::with_capacity(n);
    let mut ad_source_type = Vec::with_capacity(n);
    let mut ad_source_url = Vec::with_capacity(n);
    let mut ad_headline = Vec::with_capacity(n);
    let mut ctwa_clid = Vec::with_capacity(n);
    for c in contacts {
        let s = c.state;
        tenant.push(c.tenant);
        phone.push(c.phone);
        lead_at.push(s.lead.as_ref().and_then(|l| millis(l.at)));
        channel.push(s.lead.as_ref().map(|l| l.channel.as_str()));
        campaign.push(s.lead.as_ref().and_then(|l| l.campaign.as_deref()));
        lead_event_id.push(s.lead.as_ref().map(|l| l.event_id.as_str()));
        booking_at.push(s.booking_at.and_then(millis));
        transaction_at.push(s.transaction_at.and_then(millis));
        value.push(s.transaction_value());
        tcount.push(s.transactions.len() as i32);
        first.push(s.first_message_at.and_then(millis));
        last.push(s.last_message_at.and_then(millis));
        mcount.push(s.message_count());
        version.push(s.rule_set_version);
        let ad = s.ad.as_ref();
        let referral = ad.map(|a| &a.referral);
        ad_at.push(ad.and_then(|a| millis(a.at)));
        ad_event_id.push(ad.map(|a| a.event_id.as_str()));
        ad_source_id.push(referral.and_then(|r| r.source_id.as_deref()));
        ad_source_type.push(referral.and_then(|r| r.source_type.as_deref()));
        ad_source_url.push(referral.and_then(|r| r.source_url.as_deref()));
        ad_headline.push(referral.and_then(|r| r.headline.as_deref()));
        ctwa_clid.push(referral.and_then(|r| r.ctwa_clid.as_deref()));
    }
    sqlx::query(
        "INSERT INTO funnel_contacts (tenant, phone, lead_at, channel, campaign, lead_event_id,
             booking_at, transaction_at, transaction_value, transaction_count,
             first_message_at, last_message_at, message_count, rule_set_version,
             ad_at, ad_event_id, ad_source_id, ad_source_type, ad_source_url, ad_headline, ctwa_clid,
             updated_at)
         SELECT t.*, now() FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],
             $6::text[], $7::timestamptz[], $8::timestamptz[], $9::numeric[], $10::int[],
             $11::timestamptz[], $12::timestamptz[], $13::bigint[], $14::bigint[],
             $15::timestamptz[], $16::text[], $17::text[], $18::text[], $19::text[], $20::text[],
             $21::text[]) AS t
         ON CONFLICT (tenant, phone) DO UPDATE SET
             lead_at = EXCLUDED.lead_at, channel = EXCLUDED.channel, campaign = EXCLUDED.campaign,
             lead_event_id = EXCLUDED.lead_event_id, booking_at = EXCLUDED.booking_at,
             transaction_at = EXCLUDED.transaction_at, transaction_value = EXCLUDED.transaction_value,
             transaction_count = EXCLUDED.transaction_count, first_message_at = EXCLUDED.first_message_at,
             last_message_at = EXCLUDED.last_message_at, message_count = EXCLUDED.message_count,
             rule_set_version = EXCLUDED.rule_set_version, ad_at = EXCLUDED.ad_at,
             ad_event_id = EXCLUDED.ad_event_id, ad_source_id = EXCLUDED.ad_source_id,
             ad_source_type = EXCLUDED.ad_source_type, ad_source_url = EXCLUDED.ad_source_url,
             ad_headline = EXCLUDED.ad_headline, ctwa_clid = EXCLUDED.ctwa_clid, updated_at = now()",
    )
    .bind(tenant)
    .bind(phone)
    .bind(lead_at)
    .bind(channel)
    .bind(campaign)
    .bind(lead_event_id)
    .bind(booking_at)
    .bind(transaction_at)
    .bind(value)
    .bind(tcount)
    .bind(first)
    .bind(last)
    .bind(mcount)
    .bind(version)
    .bind(ad_at)
    .bind(ad_event_id)
    .bind(ad_source_id)
    .bind(ad_source_type)
    .bind(ad_source_url)
    .bind(ad_headline)
    .bind(ctwa_clid)
    .execute(tx)
    .await?;
    Ok(())
}

async fn insert_stage_events(
    tx: &mut sqlx::PgConnection,
    topic: &str,
    events: &[StageEventRow],
) -> Result<(), sqlx::Error> {
    let col = |f: fn(&StageEventRow) -> String| events.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO funnel_stage_events (tenant, event_id, phone, stage, occurred_at, channel, value,
             rule_id, rule_set_version, source_topic, source_partition, source_offset)
         SELECT t.tenant, t.event_id, t.phone, t.stage, t.occurred_at, t.channel, t.value, t.rule_id,
                t.rule_set_version, $12, t.source_partition, t.source_offset
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[],
                $7::numeric[], $8::text[], $9::bigint[], $10::int[], $11::bigint[])
             AS t(tenant, event_id, phone, stage, occurred_at, channel, value, rule_id,
                  rule_set_version, source_partition, source_offset)
         ON CONFLICT (tenant, event_id, stage) DO NOTHING",
    )
    .bind(col(|e| e.tenant.clone()))
    .bind(col(|e| e.event_id.clone()))
    .bind(col(|e| e.phone.clone()))
    .bind(col(|e| e.stage.to_string()))
    .bind(events.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
    .bind(col(|e| e.channel.clone()))
    .bind(events.iter().map(|e| e.value).collect::<Vec<_>>())
    .bind(col(|e| e.rule_id.clone()))
    .bind(events.iter().map(|e| e.rule_set_version).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.source_partition).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.source_offset).collect::<Vec<_>>())
    .bind(topic)
    .execute(tx)
    .await?;
    Ok(())
}

/// The classification each event was committed with: its stage hits and the rule set version,
/// by (tenant, event id), for events of the given (tenant, phone, event id). Events without
/// stage events (nothing matched) are absent.
/// `schema` names the generation to read (None: the pool's own).
pub async fn recorded_hits(
    pool: &PgPool,
    schema: Option<&str>,
    keys: &[(&str, &str, &str)],
) -> Result<HashMap<(String, String), (Vec<StageHit>, i64)>, sqlx::Error> {
    /// tenant, event id, stage, rule id, value, rule set version
    type Recorded = (String, String, String, Option<String>, Decimal, Option<i64>);
    let table = match schema {
        Some(s) => format!("{}.funnel_stage_events", crate::db::ident(s)),
        None => "funnel_stage_events".to_string(),
    };
    let rows: Vec<Recorded> = sqlx::query_as(&format!(
        "SELECT e.tenant, e.event_id, e.stage, e.rule_id, e.value, e.rule_set_version
           FROM {table} e
           JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS k(tenant, phone, event_id)
             ON e.tenant = k.tenant AND e.phone = k.phone AND e.event_id = k.event_id"
    ))
    .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.2).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    let mut out: HashMap<(String, String), (Vec<StageHit>, i64)> = HashMap::new();
    for (tenant, event_id, stage, rule_id, value, version) in rows {
        let stage = match stage.as_str() {
            "lead" => Stage::Lead,
            "booking" => Stage::Booking,
            _ => Stage::Transaction,
        };
        let entry = out.entry((tenant, event_id)).or_default();
        entry.0.push(StageHit {
            stage,
            rule_id: rule_id.unwrap_or_default(),
            value,
        });
        entry.1 = entry.1.max(version.unwrap_or(0));
    }
    for (hits, _) in out.values_mut() {
        hits.sort_by_key(|h| h.stage);
    }
    Ok(out)
}
