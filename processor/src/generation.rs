//! Generations of the sink (docs/replay.md). Each generation has its own PostgreSQL schema
//! (`funnel_gen_<n>`: contacts, stage events, funnel_daily, offsets), its own Kafka consumer
//! group (`FUNNEL_CONSUMER_GROUP` plus a suffix) and its own RocksDB folder
//! (`FUNNEL_STATE_DIR/gen-<n>`). The public views point at the live one. A processor runs one
//! pipeline per generation that is live or being built, so a replay goes on beside the live
//! sink and takes over at the switch without a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use funnel_runtime::db::{self, DbError};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenState {
    /// Written by a replay while the live generation goes on; not visible to readers.
    Building,
    /// The public views point at it.
    Live,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub number: i32,
    pub schema: String,
    pub state: GenState,
    /// Appended to `FUNNEL_CONSUMER_GROUP` to name the generation's consumer group.
    pub group_suffix: String,
    /// For a generation built by a replay: the schema of the generation it replaced, whose
    /// classification records keep below the boundaries.
    pub source_schema: Option<String>,
    pub boundaries: Option<Boundaries>,
}

/// Where a replay starts classifying again, per partition of the input topic
/// (`funnel_generations.boundaries`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Boundaries {
    pub topic: String,
    /// From this offset on, records are classified under the current rules; before it they
    /// keep the classification the source generation committed.
    pub reclassify_from: std::collections::BTreeMap<i32, i64>,
    /// Below this offset the source generation has already dead-lettered the poison records;
    /// they are not produced to the dead-letter topic again.
    pub dead_letters_from: std::collections::BTreeMap<i32, i64>,
}

impl Boundaries {
    /// Whether the record at `offset` of `partition` keeps its committed classification.
    pub fn keeps_classification(&self, partition: i32, offset: i64) -> bool {
        self.reclassify_from
            .get(&partition)
            .is_some_and(|b| offset < *b)
    }

    /// Whether the record at `offset` was already dead-lettered by the source generation.
    pub fn already_dead_lettered(&self, partition: i32, offset: i64) -> bool {
        self.dead_letters_from
            .get(&partition)
            .is_some_and(|b| offset < *b)
    }
}

impl Generation {
    /// The generation's Kafka consumer group, `FUNNEL_CONSUMER_GROUP` plus its suffix.
    pub fn consumer_group(&self, base: &str) -> String {
        consumer_group(base, &self.group_suffix)
    }

    pub fn state_dir(&self, base: &Path) -> PathBuf {
        state_dir(base, self.number)
    }
}

/// The consumer group of the generation with `suffix` (`funnel_generations.group_suffix`):
/// the one place such a name is made.
pub fn consumer_group(base: &str, suffix: &str) -> String {
    format!("{base}{suffix}")
}

/// The group suffix of generation `number` (generation 1 keeps the configured group: its
/// suffix is empty, set by the migration).
pub fn group_suffix(number: i32) -> String {
    format!(".gen-{number}")
}

/// The schema of generation `number`.
pub fn schema_name(number: i32) -> String {
    format!("funnel_gen_{number}")
}

pub fn state_dir(base: &Path, number: i32) -> PathBuf {
    base.join(format!("gen-{number}"))
}

const SELECT: &str =
    "SELECT g.generation, g.schema_name, g.state, g.group_suffix, s.schema_name, g.boundaries
       FROM funnel_generations g
       LEFT JOIN funnel_generations s ON s.generation = g.source_generation";

type Row = (
    i32,
    String,
    String,
    String,
    Option<String>,
    Option<sqlx::types::Json<Boundaries>>,
);

fn of(row: Row) -> Generation {
    let (number, schema, state, group_suffix, source_schema, boundaries) = row;
    Generation {
        number,
        schema,
        state: if state == "live" {
            GenState::Live
        } else {
            GenState::Building
        },
        group_suffix,
        source_schema,
        boundaries: boundaries.map(|b| b.0),
    }
}

/// The generations a processor serves: the live one and the one being built, if any.
pub async fn active(pool: &PgPool) -> Result<Vec<Generation>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "{SELECT} WHERE g.state IN ('live', 'building') ORDER BY g.generation"
    ))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(of).collect())
}

#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error("no live generation in funnel_generations: are the migrations applied?")]
    NoLive,
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
}

/// The live generation.
pub async fn live(pool: &PgPool) -> Result<Generation, GenerationError> {
    let row: Option<Row> = sqlx::query_as(&format!("{SELECT} WHERE g.state = 'live'"))
        .fetch_optional(pool)
        .await?;
    row.map(of).ok_or(GenerationError::NoLive)
}

/// The generation being built, if any.
pub async fn building(pool: &PgPool) -> Result<Option<Generation>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!("{SELECT} WHERE g.state = 'building'"))
        .fetch_optional(pool)
        .await?;
    Ok(row.map(of))
}

/// A pool whose connections resolve the sink's table names to the generation's schema first
/// (then `public`, for the shared tables and functions).
pub async fn connect(database_url: &str, schema: &str) -> Result<PgPool, DbError> {
    db::connect_in_schema(
        database_url,
        schema,
        PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10)),
    )
    .await
}

/// Before generations, `FUNNEL_STATE_DIR` was itself the RocksDB folder of the one sink. That
/// state belongs to generation 1: its files move into `gen-1` (a rename, no copy).
pub fn adopt_legacy_state(base: &Path) -> std::io::Result<()> {
    if !base.join("CURRENT").exists() {
        return Ok(());
    }
    let target = state_dir(base, 1);
    std::fs::create_dir_all(&target)?;
    for entry in std::fs::read_dir(base)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("gen-") {
            continue;
        }
        std::fs::rename(entry.path(), target.join(&name))?;
    }
    tracing::info!(dir = %target.display(), "moved the state folder into the generation 1 layout");
    Ok(())
}

/// Deletes the RocksDB folders of generations this processor no longer serves.
pub fn remove_stale_state(base: &Path, keep: &[i32]) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(base) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(n) = name
            .strip_prefix("gen-")
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if !keep.contains(&n) && entry.path().is_dir() {
            tracing::info!(generation = n, dir = %entry.path().display(), "deleting the state of a generation no longer served");
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> Self {
            let p = std::env::temp_dir().join(format!("funnel-gen-test-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&p).expect("temp dir");
            Self(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn legacy_state_moves_into_generation_one() {
        let dir = TempDir::new();
        let base = dir.0.as_path();
        std::fs::write(base.join("CURRENT"), "MANIFEST-000001\n").expect("write");
        std::fs::write(base.join("000005.sst"), "data").expect("write");
        std::fs::create_dir_all(base.join("gen-2")).expect("mkdir");
        adopt_legacy_state(base).expect("adopt");
        assert!(!base.join("CURRENT").exists());
        assert_eq!(
            std::fs::read_to_string(base.join("gen-1/000005.sst")).expect("moved"),
            "data"
        );
        assert!(base.join("gen-1/CURRENT").exists());
        assert!(base.join("gen-2").is_dir(), "other generations stay");
        // Nothing to adopt the second time.
        adopt_legacy_state(base).expect("adopt again");
        assert!(base.join("gen-1/CURRENT").exists());
    }

    #[test]
    fn stale_generations_are_removed() {
        let dir = TempDir::new();
        let base = dir.0.as_path();
        for g in ["gen-1", "gen-2", "gen-3"] {
            std::fs::create_dir_all(base.join(g)).expect("mkdir");
        }
        std::fs::create_dir_all(base.join("other")).expect("mkdir");
        remove_stale_state(base, &[2]).expect("remove");
        assert!(!base.join("gen-1").exists());
        assert!(base.join("gen-2").exists());
        assert!(!base.join("gen-3").exists());
        assert!(
            base.join("other").exists(),
            "only generation folders are touched"
        );
    }

    #[test]
    fn boundaries() {
        let b = Boundaries {
            topic: "t".into(),
            reclassify_from: [(0, 10), (1, 0)].into_iter().collect(),
            dead_letters_from: [(0, 20)].into_iter().collect(),
        };
        assert!(b.keeps_classification(0, 9));
        assert!(!b.keeps_classification(0, 10));
        assert!(!b.keeps_classification(1, 0));
        assert!(
            !b.keeps_classification(2, 0),
            "a partition without a boundary is reclassified"
        );
        assert!(b.already_dead_lettered(0, 19));
        assert!(!b.already_dead_lettered(0, 20));
        let json = serde_json::to_string(&b).expect("json");
        assert_eq!(serde_json::from_str::<Boundaries>(&json).expect("parse"), b);
    }

    #[test]
    fn names() {
        let g = Generation {
            number: 3,
            schema: "funnel_gen_3".into(),
            state: GenState::Building,
            group_suffix: ".gen-3".into(),
            source_schema: Some("funnel_gen_2".into()),
            boundaries: None,
        };
        assert_eq!(group_suffix(3), g.group_suffix);
        assert_eq!(schema_name(3), g.schema);
        assert_eq!(
            g.consumer_group("funnel-processor"),
            "funnel-processor.gen-3"
        );
        assert_eq!(g.state_dir(Path::new("/s")), PathBuf::from("/s/gen-3"));
    }
}
