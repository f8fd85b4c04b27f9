//! A replay generation's life: created beside the live one, built by the running processors,
//! watched until it has caught up, completed (indexes, `funnel_daily`, triggers), then switched
//! to (the public views repointed in one transaction) or abandoned.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use funnel_runtime::db::ident;
use funnel_runtime::kafka::{partitions_of, REQUEST_TIMEOUT};
use rdkafka::consumer::Consumer;
use serde::Serialize;
use sqlx::PgPool;

use super::offsets::{consumer, delete_groups, members, stored_offsets};
use super::{Plan, ReplayError};
use crate::generation::{self, consumer_group, group_suffix, schema_name, Generation};
use crate::settings::Settings;

/// Creates the generation a plan describes: its empty tables (copies of the live ones) and
/// its row, state `building`. The running processors start building it on their next look at
/// `funnel_generations`. Schemas of retired generations are dropped first.
pub async fn create(
    settings: &Settings,
    pool: &PgPool,
    plan: &Plan,
    by: &str,
) -> Result<Generation, ReplayError> {
    let mut tx = pool.begin().await?;
    sqlx::query("LOCK TABLE funnel_generations IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let live: i32 =
        sqlx::query_scalar("SELECT generation FROM funnel_generations WHERE state = 'live'")
            .fetch_one(&mut *tx)
            .await?;
    if live != plan.live_generation {
        return Err(ReplayError::LiveChanged(live));
    }
    let busy: Option<i32> =
        sqlx::query_scalar("SELECT generation FROM funnel_generations WHERE state = 'building'")
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(b) = busy {
        return Err(ReplayError::UnderWay(b));
    }
    let retired: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT generation, schema_name, group_suffix FROM funnel_generations WHERE state = 'retired'",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (n, schema, _) in &retired {
        sqlx::query("SELECT funnel_drop_generation_schema($1)")
            .bind(schema)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE funnel_generations SET state = 'dropped' WHERE generation = $1")
            .bind(n)
            .execute(&mut *tx)
            .await?;
    }
    let n: i32 =
        sqlx::query_scalar("SELECT coalesce(max(generation), 0) + 1 FROM funnel_generations")
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query("SELECT funnel_create_generation_tables($1, $2)")
        .bind(schema_name(n))
        .bind(&plan.live_schema)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO funnel_generations (generation, schema_name, state, group_suffix, source_generation,
                                         replay_from, boundaries, created_by, tables_complete)
         VALUES ($1, $2, 'building', $3, $4, $5, $6, $7, false)",
    )
    .bind(n)
    .bind(schema_name(n))
    .bind(group_suffix(n))
    .bind(plan.live_generation)
    .bind(&plan.from)
    .bind(sqlx::types::Json(plan.boundaries()))
    .bind(by)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let groups: Vec<String> = retired
        .iter()
        .map(|(_, _, suffix)| consumer_group(&settings.consumer_group, suffix))
        .filter(|g| *g != plan.live_group)
        .collect();
    delete_groups(settings, &groups).await;
    generation::active(pool)
        .await?
        .into_iter()
        .find(|g| g.number == n)
        .ok_or(ReplayError::Gone(n))
}

/// Gives the building generation the indexes, `funnel_daily` rows and triggers it was built
/// without (copies of the live generation's), once it has caught up. Returns how long that
/// took, or None when they were already there. The processors' writes to it wait meanwhile;
/// a lock not granted in time, or a deadlock PostgreSQL broke, is tried again (five times).
pub async fn complete(pool: &PgPool) -> Result<Option<Duration>, ReplayError> {
    let started = Instant::now();
    let mut attempt = 1;
    loop {
        match complete_once(pool).await {
            Ok(done) => return Ok(done.then(|| started.elapsed())),
            Err(e @ ReplayError::Contention(_)) if attempt < 5 => {
                tracing::warn!(attempt, error = %e, "completing the tables met a lock; trying again");
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One attempt: true when it completed the tables, false when they already were.
async fn complete_once(pool: &PgPool) -> Result<bool, ReplayError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '120s'")
        .execute(&mut *tx)
        .await?;
    let row: Option<(i32, String, bool)> = sqlx::query_as(
        "SELECT generation, schema_name, tables_complete FROM funnel_generations
          WHERE state = 'building' FOR UPDATE",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some((n, schema, done)) = row else {
        return Err(ReplayError::NotUnderWay("complete"));
    };
    if done {
        return Ok(false);
    }
    sqlx::query("SELECT funnel_complete_generation_tables($1, funnel_live_schema())")
        .bind(&schema)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE funnel_generations SET tables_complete = true WHERE generation = $1")
        .bind(n)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// A building generation's progress against the live one.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub live_generation: i32,
    pub building_generation: i32,
    /// Per partition: (end of the log, live offset, building offset).
    pub partitions: BTreeMap<i32, (i64, Option<i64>, Option<i64>)>,
}

impl Progress {
    /// Records the building generation still has to read to reach the live one.
    pub fn behind_live(&self) -> i64 {
        self.partitions
            .values()
            .map(|(_, l, b)| (l.unwrap_or(0) - b.unwrap_or(0)).max(0))
            .sum()
    }

    pub fn read(&self) -> i64 {
        self.partitions
            .values()
            .map(|(_, _, b)| b.unwrap_or(0))
            .sum()
    }

    pub fn end(&self) -> i64 {
        self.partitions.values().map(|(h, _, _)| *h).sum()
    }

    /// Whether the building generation has applied at least what the live one has, in every
    /// partition: then no contact is missing from it.
    pub fn caught_up(&self) -> bool {
        self.behind_live() == 0
    }
}

/// The progress of the generation being built, if any.
pub async fn progress(settings: &Settings, pool: &PgPool) -> Result<Option<Progress>, ReplayError> {
    let Some(b) = generation::building(pool).await? else {
        return Ok(None);
    };
    let live = generation::live(pool).await?;
    let topic = settings.kafka.topic_messages.clone();
    let base = &settings.consumer_group;
    let lo = stored_offsets(pool, &live.schema, &live.consumer_group(base), &topic).await?;
    let bo = stored_offsets(pool, &b.schema, &b.consumer_group(base), &topic).await?;
    let (settings2, group) = (settings.clone(), b.consumer_group(base));
    let ends = tokio::task::spawn_blocking(move || -> Result<BTreeMap<i32, i64>, ReplayError> {
        let c = consumer(&settings2, &group)?;
        let mut ends = BTreeMap::new();
        for p in partitions_of(&c, &topic)? {
            ends.insert(p, c.fetch_watermarks(&topic, p, REQUEST_TIMEOUT)?.1);
        }
        Ok(ends)
    })
    .await??;
    Ok(Some(Progress {
        live_generation: live.number,
        building_generation: b.number,
        partitions: ends
            .into_iter()
            .map(|(p, h)| (p, (h, lo.get(&p).map(|x| x.0), bo.get(&p).map(|x| x.0))))
            .collect(),
    }))
}

/// What [`wait_until_caught_up`] reports while it waits.
pub enum Waiting<'a> {
    /// Every few seconds: how far the generation is.
    Progress(&'a Progress, Duration),
    /// No processor has consumed as the generation's group for a while.
    NoBuilder { generation: i32, group: &'a str },
    /// It has caught up.
    CaughtUp(&'a Progress, Duration),
    /// Its indexes, `funnel_daily` and triggers were built, in this time.
    Completed { generation: i32, took: Duration },
    /// The switch did not get its locks in time (a long query on the views, the sink
    /// mid-batch); it is tried again.
    Busy,
}

/// Waits until generation `number` has caught up with the live one, reporting to `report`.
pub async fn wait_until_caught_up(
    settings: &Settings,
    pool: &PgPool,
    number: i32,
    mut report: impl FnMut(Waiting<'_>),
) -> Result<(), ReplayError> {
    let started = Instant::now();
    let group = consumer_group(&settings.consumer_group, &group_suffix(number));
    let mut last_report: Option<Instant> = None;
    let mut idle_since: Option<Instant> = None;
    loop {
        let Some(p) = progress(settings, pool).await? else {
            return Err(ReplayError::Gone(number));
        };
        if p.caught_up() {
            report(Waiting::CaughtUp(&p, started.elapsed()));
            return Ok(());
        }
        let due = last_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
        if members(settings, &group).await.unwrap_or(0) == 0 {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(20) && due {
                report(Waiting::NoBuilder {
                    generation: number,
                    group: &group,
                });
            }
        } else {
            idle_since = None;
        }
        if due {
            report(Waiting::Progress(&p, started.elapsed()));
            last_report = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A switch that happened: generation `to` is live, `from` is retired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switched {
    pub from: i32,
    pub to: i32,
    /// The retired generation's consumer group.
    pub from_group: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switch {
    /// The views point at the new generation.
    Switched(Switched),
    /// The building generation has not applied everything the live one has yet.
    Behind(i64),
    /// A lock was not granted in time (a long query on the views, or the sink mid-batch).
    Busy,
}

/// Switches the public views to the building generation, if it has caught up with the live
/// one. The live generation's offsets table is locked against writes in the same transaction,
/// so the live sink cannot move ahead between the check and the switch: a reader never sees
/// the contact count go back.
pub async fn switch(settings: &Settings, pool: &PgPool) -> Result<Switch, ReplayError> {
    match switch_once(settings, pool).await {
        Err(ReplayError::Contention(_)) => Ok(Switch::Busy),
        other => other,
    }
}

async fn switch_once(settings: &Settings, pool: &PgPool) -> Result<Switch, ReplayError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query("LOCK TABLE funnel_generations IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let gens: Vec<(i32, String, String, String, bool)> = sqlx::query_as(
        "SELECT generation, schema_name, state, group_suffix, tables_complete FROM funnel_generations
          WHERE state IN ('live', 'building')",
    )
    .fetch_all(&mut *tx)
    .await?;
    let live = gens.iter().find(|g| g.2 == "live");
    let building = gens.iter().find(|g| g.2 == "building");
    let (Some(live), Some(building)) = (live, building) else {
        return Err(ReplayError::NotUnderWay("switch to"));
    };
    if !building.4 {
        return Err(ReplayError::Incomplete(building.0));
    }
    sqlx::query(&format!(
        "LOCK TABLE {}.funnel_sink_offsets IN SHARE ROW EXCLUSIVE MODE",
        ident(&live.1)
    ))
    .execute(&mut *tx)
    .await?;
    let offsets = |schema: &str| {
        format!(
            "SELECT partition, next_offset FROM {}.funnel_sink_offsets WHERE consumer_group = $1 AND topic = $2",
            ident(schema)
        )
    };
    let topic = &settings.kafka.topic_messages;
    let (live_group, building_group) = (
        consumer_group(&settings.consumer_group, &live.3),
        consumer_group(&settings.consumer_group, &building.3),
    );
    let lo: Vec<(i32, i64)> = sqlx::query_as(&offsets(&live.1))
        .bind(&live_group)
        .bind(topic)
        .fetch_all(&mut *tx)
        .await?;
    let bo: HashMap<i32, i64> = sqlx::query_as::<_, (i32, i64)>(&offsets(&building.1))
        .bind(&building_group)
        .bind(topic)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
    let behind: i64 = lo
        .iter()
        .map(|(p, l)| (l - bo.get(p).copied().unwrap_or(0)).max(0))
        .sum();
    if behind > 0 {
        tx.rollback().await?;
        return Ok(Switch::Behind(behind));
    }
    sqlx::query("SELECT funnel_point_views($1)")
        .bind(&building.1)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE funnel_generations SET state = 'retired', ended_at = now() WHERE generation = $1",
    )
    .bind(live.0)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE funnel_generations SET state = 'live', switched_at = now() WHERE generation = $1",
    )
    .bind(building.0)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Switch::Switched(Switched {
        from: live.0,
        to: building.0,
        from_group: live_group,
    }))
}

/// Waits for the building generation to catch up, completes it and switches to it (trying
/// again while the views or the live sink are busy), reporting to `report`. Returns the
/// switch, and whether the retired generation's consumer group could be deleted.
pub async fn wait_and_switch(
    settings: &Settings,
    pool: &PgPool,
    mut report: impl FnMut(Waiting<'_>),
) -> Result<(Switched, bool), ReplayError> {
    let Some(building) = generation::building(pool).await? else {
        return Err(ReplayError::NotUnderWay("switch to"));
    };
    wait_until_caught_up(settings, pool, building.number, &mut report).await?;
    if let Some(took) = complete(pool).await? {
        report(Waiting::Completed {
            generation: building.number,
            took,
        });
    }
    loop {
        match switch(settings, pool).await? {
            Switch::Switched(s) => {
                let deleted = retire_group(settings, &s.from_group).await?;
                return Ok((s, deleted));
            }
            Switch::Behind(n) => tracing::debug!(behind = n, "live generation moved on; waiting"),
            Switch::Busy => report(Waiting::Busy),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Gives up the building generation: marks it abandoned (the processors stop building it),
/// waits for them to leave its consumer group, then drops its schema and group.
pub async fn abandon(settings: &Settings, pool: &PgPool) -> Result<Generation, ReplayError> {
    let Some(b) = generation::building(pool).await? else {
        return Err(ReplayError::NotUnderWay("abandon"));
    };
    sqlx::query("UPDATE funnel_generations SET state = 'abandoned', ended_at = now() WHERE generation = $1 AND state = 'building'")
        .bind(b.number)
        .execute(pool)
        .await?;
    let group = b.consumer_group(&settings.consumer_group);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while members(settings, &group).await.unwrap_or(0) > 0 && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '60s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT funnel_drop_generation_schema($1)")
        .bind(&b.schema)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    delete_groups(settings, &[group]).await;
    Ok(b)
}

/// After a switch: waits (up to a minute) for the processors to stop the retired generation's
/// pipeline, then deletes its consumer group, so that any offset later committed under that
/// name was set by hand and is noticed. False when a processor still consumes as it.
pub async fn retire_group(settings: &Settings, group: &str) -> Result<bool, ReplayError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while members(settings, group).await? > 0 {
        if tokio::time::Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    delete_groups(settings, &[group.to_string()]).await;
    Ok(true)
}

/// One row of `funnel_generations`, for `replay status`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GenerationRow {
    pub generation: i32,
    pub schema_name: String,
    pub state: String,
    pub replay_from: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub switched_at: Option<DateTime<Utc>>,
}

/// Every generation, oldest first.
pub async fn generations(pool: &PgPool) -> Result<Vec<GenerationRow>, ReplayError> {
    Ok(sqlx::query_as(
        "SELECT generation, schema_name, state, replay_from, created_at, switched_at
           FROM funnel_generations ORDER BY generation",
    )
    .fetch_all(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_catches_up_only_when_every_partition_has() {
        let mut p = Progress {
            live_generation: 1,
            building_generation: 2,
            partitions: [
                (0, (100, Some(100), Some(100))),
                (1, (50, Some(50), Some(20))),
            ]
            .into_iter()
            .collect(),
        };
        assert_eq!(p.behind_live(), 30);
        assert!(!p.caught_up());
        p.partitions.insert(1, (60, Some(50), Some(55)));
        assert!(p.caught_up(), "ahead of the live generation is caught up");
        assert_eq!(p.read(), 155);
        assert_eq!(p.end(), 160);
    }
}
