//! `replay diff`: the live generation against the one being built (or, after a switch, against
//! the one it replaced, while its schema is kept): contacts and revenue per stage and lead
//! channel, and the contacts whose funnel moved, by kind of change.

use std::collections::BTreeMap;

use funnel_runtime::db::ident;
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;

use super::{progress, ReplayError};
use crate::generation;
use crate::settings::Settings;

/// One row of `replay diff`: contacts that reached a stage, by lead channel, in both
/// generations, and their revenue.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StageDiff {
    pub stage: String,
    /// Lead channel; None: contacts without a lead.
    pub channel: Option<String>,
    pub live_contacts: i64,
    pub new_contacts: i64,
    pub live_revenue: Decimal,
    pub new_revenue: Decimal,
}

/// Contacts whose funnel the replay changed, by kind of change, with a few phones each.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Moved {
    pub change: String,
    pub contacts: i64,
    /// `tenant phone`, the first few by phone.
    pub samples: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub live_generation: i32,
    pub new_generation: i32,
    /// Whether the new generation has caught up with the live one (else contacts the live one
    /// has and the new one has not read yet count as moved).
    pub caught_up: bool,
    pub stages: Vec<StageDiff>,
    pub moved: Vec<Moved>,
}

/// Compares the live generation with the one being built (or, when none is, the live one
/// with the one it replaced, while that one's schema is kept).
pub async fn diff(settings: &Settings, pool: &PgPool, samples: i64) -> Result<Diff, ReplayError> {
    let live = generation::live(pool).await?;
    let (old, new, caught_up) = match generation::building(pool).await? {
        Some(b) => {
            let caught = progress(settings, pool)
                .await?
                .is_some_and(|p| p.caught_up());
            (
                (live.number, live.schema.clone()),
                (b.number, b.schema),
                caught,
            )
        }
        None => {
            let retired: Option<(i32, String)> = sqlx::query_as(
                "SELECT generation, schema_name FROM funnel_generations WHERE state = 'retired'
                  ORDER BY generation DESC LIMIT 1",
            )
            .fetch_optional(pool)
            .await?;
            let Some(r) = retired else {
                return Err(ReplayError::NotUnderWay(
                    "compare (and no replaced generation is kept)",
                ));
            };
            (r, (live.number, live.schema.clone()), true)
        }
    };
    let per_stage = |schema: &str| {
        format!(
            "SELECT s.stage, c.channel, count(*)::bigint, coalesce(sum(c.transaction_value), 0)::numeric(20,2)
               FROM {}.funnel_contacts c
              CROSS JOIN LATERAL (VALUES ('lead', c.lead_at), ('booking', c.booking_at),
                                         ('transaction', c.transaction_at)) AS s(stage, at)
              WHERE s.at IS NOT NULL
              GROUP BY 1, 2",
            ident(schema)
        )
    };
    type StageRow = (String, Option<String>, i64, Decimal);
    let a: Vec<StageRow> = sqlx::query_as(&per_stage(&old.1)).fetch_all(pool).await?;
    let b: Vec<StageRow> = sqlx::query_as(&per_stage(&new.1)).fetch_all(pool).await?;
    let mut rows: BTreeMap<(u8, Option<String>), StageDiff> = BTreeMap::new();
    let order = |s: &str| match s {
        "lead" => 0u8,
        "booking" => 1,
        _ => 2,
    };
    for (side, list) in [(0, a), (1, b)] {
        for (stage, channel, n, revenue) in list {
            let r = rows
                .entry((order(&stage), channel.clone()))
                .or_insert_with(|| StageDiff {
                    stage: stage.clone(),
                    channel: channel.clone(),
                    ..Default::default()
                });
            if side == 0 {
                r.live_contacts = n;
                r.live_revenue = revenue;
            } else {
                r.new_contacts = n;
                r.new_revenue = revenue;
            }
        }
    }
    let moved: Vec<(String, i64, Vec<String>)> = sqlx::query_as(&format!(
        "WITH j AS (
             SELECT coalesce(a.tenant, b.tenant) AS tenant, coalesce(a.phone, b.phone) AS phone,
                    a.phone IS NOT NULL AS in_a, b.phone IS NOT NULL AS in_b,
                    a.lead_at IS NOT NULL AS la, b.lead_at IS NOT NULL AS lb,
                    a.booking_at IS NOT NULL AS ba, b.booking_at IS NOT NULL AS bb,
                    a.transaction_at IS NOT NULL AS ta, b.transaction_at IS NOT NULL AS tb,
                    a.channel AS ca, b.channel AS cb,
                    a.transaction_value AS va, b.transaction_value AS vb
               FROM {}.funnel_contacts a
               FULL JOIN {}.funnel_contacts b ON a.tenant = b.tenant AND a.phone = b.phone
         ), k AS (
             SELECT tenant, phone, v.change, v.ord
               FROM j CROSS JOIN LATERAL (VALUES
                    (1, 'lead gained', in_a AND in_b AND lb AND NOT la),
                    (2, 'lead lost', in_a AND in_b AND la AND NOT lb),
                    (3, 'booking gained', in_a AND in_b AND bb AND NOT ba),
                    (4, 'booking lost', in_a AND in_b AND ba AND NOT bb),
                    (5, 'transaction gained', in_a AND in_b AND tb AND NOT ta),
                    (6, 'transaction lost', in_a AND in_b AND ta AND NOT tb),
                    (7, 'lead channel changed', in_a AND in_b AND la AND lb AND ca IS DISTINCT FROM cb),
                    (8, 'revenue changed', in_a AND in_b AND va <> vb),
                    (9, 'only in the live generation', in_a AND NOT in_b),
                    (10, 'only in the new generation', in_b AND NOT in_a)) AS v(ord, change, hit)
              WHERE v.hit
         )
         SELECT change, count(*)::bigint,
                (array_agg(tenant || ' ' || phone ORDER BY phone))[1:$1]
           FROM k GROUP BY change, ord ORDER BY ord",
        ident(&old.1),
        ident(&new.1)
    ))
    .bind(samples.max(0) as i32)
    .fetch_all(pool)
    .await?;
    Ok(Diff {
        live_generation: old.0,
        new_generation: new.0,
        caught_up,
        stages: rows.into_values().collect(),
        moved: moved
            .into_iter()
            .map(|(change, contacts, samples)| Moved {
                change,
                contacts,
                samples,
            })
            .collect(),
    })
}
