//! `funnel-loadtest verify`: the tables against the oracle, with a readable diff.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, Utc};
use funnel_schemas::rules::Stage;
use rust_decimal::Decimal;
use sqlx::PgPool;

use crate::oracle::{Expected, ExpectedRow, StageTotals};

/// One way the tables differ from the oracle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// A contact the traffic must produce has no row
    Missing(Box<ExpectedRow>),
    /// A row no message of the traffic explains
    Extra(Box<ExpectedRow>),
    /// A column of a contact's row
    Field {
        tenant: String,
        phone: String,
        field: &'static str,
        expected: String,
        actual: String,
    },
    /// Stage events of a tenant
    Stage {
        tenant: String,
        stage: Stage,
        expected: StageTotals,
        actual: StageTotals,
    },
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Missing(r) => write!(
                f,
                "missing  {}/{}: expected a row (lead_at {}, {} messages)",
                r.tenant,
                r.phone,
                show(&r.lead_at),
                r.message_count
            ),
            Difference::Extra(r) => write!(
                f,
                "extra    {}/{}: a row the traffic does not explain ({} messages)",
                r.tenant, r.phone, r.message_count
            ),
            Difference::Field {
                tenant,
                phone,
                field,
                expected,
                actual,
            } => write!(
                f,
                "differs  {tenant}/{phone} {field}: expected {expected}, found {actual}"
            ),
            Difference::Stage {
                tenant,
                stage,
                expected,
                actual,
            } => write!(
                f,
                "stages   {tenant} {}: expected {} events worth {}, found {} worth {}",
                stage.as_str(),
                expected.events,
                expected.value,
                actual.events,
                actual.value
            ),
        }
    }
}

fn show<T: fmt::Debug>(v: &Option<T>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "null".into(),
    }
}

/// The comparison of the tables with the oracle.
#[derive(Debug, Default)]
pub struct Report {
    pub expected_rows: usize,
    pub actual_rows: usize,
    pub equal_rows: usize,
    pub differences: Vec<Difference>,
}

impl Report {
    pub fn is_equal(&self) -> bool {
        self.differences.is_empty()
    }

    /// The first `limit` differences and a summary.
    pub fn render(&self, limit: usize) -> String {
        let mut out = String::new();
        for d in self.differences.iter().take(limit) {
            out.push_str(&d.to_string());
            out.push('\n');
        }
        if self.differences.len() > limit {
            out.push_str(&format!(
                "... and {} more differences\n",
                self.differences.len() - limit
            ));
        }
        let count =
            |pred: fn(&Difference) -> bool| self.differences.iter().filter(|d| pred(d)).count();
        let fields: BTreeSet<(&str, &str)> = self
            .differences
            .iter()
            .filter_map(|d| match d {
                Difference::Field { tenant, phone, .. } => Some((tenant.as_str(), phone.as_str())),
                _ => None,
            })
            .collect();
        out.push_str(&format!(
            "contacts: {} expected, {} found, {} equal, {} missing, {} extra, {} different; stage totals: {} different -> {}\n",
            self.expected_rows,
            self.actual_rows,
            self.equal_rows,
            count(|d| matches!(d, Difference::Missing(_))),
            count(|d| matches!(d, Difference::Extra(_))),
            fields.len(),
            count(|d| matches!(d, Difference::Stage { .. })),
            if self.is_equal() { "EQUAL" } else { "DIFFERENT" }
        ));
        out
    }
}

/// The compared columns of a contact's row, each as the text a difference shows.
type Column = (&'static str, fn(&ExpectedRow) -> String);
const COLUMNS: [Column; 10] = [
    ("lead_at", |r| time(&r.lead_at)),
    ("channel", |r| show(&r.channel)),
    ("campaign", |r| show(&r.campaign)),
    ("booking_at", |r| time(&r.booking_at)),
    ("transaction_at", |r| time(&r.transaction_at)),
    ("transaction_value", |r| {
        r.transaction_value.normalize().to_string()
    }),
    ("transaction_count", |r| r.transaction_count.to_string()),
    ("first_message_at", |r| r.first_message_at.to_rfc3339()),
    ("last_message_at", |r| r.last_message_at.to_rfc3339()),
    ("message_count", |r| r.message_count.to_string()),
];

fn time(v: &Option<DateTime<Utc>>) -> String {
    show(&v.map(|t| t.to_rfc3339()))
}

/// Compares actual rows and stage totals with the oracle's (pure, so it is tested without a
/// database).
pub fn compare(expected: &Expected, actual: &Expected) -> Report {
    let mut report = Report {
        expected_rows: expected.rows.len(),
        actual_rows: actual.rows.len(),
        ..Report::default()
    };
    for (key, want) in &expected.rows {
        let Some(got) = actual.rows.get(key) else {
            report
                .differences
                .push(Difference::Missing(Box::new(want.clone())));
            continue;
        };
        let before = report.differences.len();
        for (name, column) in COLUMNS {
            let (expected, actual) = (column(want), column(got));
            if expected != actual {
                report.differences.push(Difference::Field {
                    tenant: want.tenant.clone(),
                    phone: want.phone.clone(),
                    field: name,
                    expected,
                    actual,
                });
            }
        }
        if report.differences.len() == before {
            report.equal_rows += 1;
        }
    }
    for (key, got) in &actual.rows {
        if !expected.rows.contains_key(key) {
            report
                .differences
                .push(Difference::Extra(Box::new(got.clone())));
        }
    }
    let keys: BTreeSet<&(String, Stage)> =
        expected.stages.keys().chain(actual.stages.keys()).collect();
    for key in keys {
        let e = expected.stages.get(key).cloned().unwrap_or_default();
        let a = actual.stages.get(key).cloned().unwrap_or_default();
        if e.events != a.events || e.value != a.value {
            report.differences.push(Difference::Stage {
                tenant: key.0.clone(),
                stage: key.1,
                expected: e,
                actual: a,
            });
        }
    }
    report
}

type ContactRecord = (
    String,
    String,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Decimal,
    i64,
    DateTime<Utc>,
    DateTime<Utc>,
    i64,
);

/// Reads the funnel rows and stage totals of `tenants` from PostgreSQL.
pub async fn load(pool: &PgPool, tenants: &[String]) -> Result<Expected, sqlx::Error> {
    let rows: Vec<ContactRecord> = sqlx::query_as(
        "SELECT tenant, phone, lead_at, channel, campaign, booking_at, transaction_at,
                transaction_value, transaction_count::int8, first_message_at, last_message_at,
                message_count::int8
           FROM funnel_contacts WHERE tenant = ANY($1)",
    )
    .bind(tenants)
    .fetch_all(pool)
    .await?;
    let mut out = Expected::default();
    for r in rows {
        out.rows.insert(
            (r.0.clone(), r.1.clone()),
            ExpectedRow {
                tenant: r.0,
                phone: r.1,
                lead_at: r.2,
                channel: r.3,
                campaign: r.4,
                booking_at: r.5,
                transaction_at: r.6,
                transaction_value: r.7,
                transaction_count: r.8,
                first_message_at: r.9,
                last_message_at: r.10,
                message_count: r.11,
            },
        );
    }
    let stages: Vec<(String, String, i64, Decimal)> = sqlx::query_as(
        "SELECT tenant, stage, count(*), COALESCE(sum(value), 0)
           FROM funnel_stage_events WHERE tenant = ANY($1) GROUP BY tenant, stage",
    )
    .bind(tenants)
    .fetch_all(pool)
    .await?;
    let by_name: BTreeMap<&str, Stage> = Stage::ALL.iter().map(|s| (s.as_str(), *s)).collect();
    for (tenant, stage, events, value) in stages {
        if let Some(stage) = by_name.get(stage.as_str()) {
            out.stages
                .insert((tenant, *stage), StageTotals { events, value });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{generate, GenConfig, DEFAULT_RULES_CSV};

    fn expected() -> Expected {
        let traffic = generate(&GenConfig {
            seed: 5,
            contacts: 30,
            ..GenConfig::default()
        });
        crate::expect(&traffic.messages, DEFAULT_RULES_CSV).unwrap()
    }

    #[test]
    fn equal_tables_pass() {
        let e = expected();
        let report = compare(&e, &e.clone());
        assert!(report.is_equal());
        assert_eq!(report.equal_rows, e.rows.len());
        assert!(report.render(5).ends_with("-> EQUAL\n"));
    }

    #[test]
    fn planted_differences_are_found_and_named() {
        let e = expected();
        let mut a = e.clone();
        let keys: Vec<_> = a.rows.keys().cloned().collect();
        a.rows.remove(&keys[0]);
        let row = a.rows.get_mut(&keys[1]).unwrap();
        row.message_count += 1;
        row.transaction_value += Decimal::new(1, 2);
        let mut extra = a.rows[&keys[2]].clone();
        extra.phone = "+6289999999999".into();
        a.rows
            .insert((extra.tenant.clone(), extra.phone.clone()), extra);
        let stage = a.stages.values_mut().next().unwrap();
        stage.events -= 1;
        let report = compare(&e, &a);
        assert!(!report.is_equal());
        let text = report.render(10);
        assert!(
            text.contains(&format!("missing  default/{}", keys[0].1)),
            "{text}"
        );
        assert!(
            text.contains(&format!("differs  default/{} message_count", keys[1].1)),
            "{text}"
        );
        assert!(text.contains("transaction_value"), "{text}");
        assert!(text.contains("extra    default/+6289999999999"), "{text}");
        assert!(text.contains("stages   default"), "{text}");
        assert!(
            text.contains(
                "1 missing, 1 extra, 1 different; stage totals: 1 different -> DIFFERENT"
            ),
            "{text}"
        );
        assert_eq!(
            report.render(1).lines().count(),
            3,
            "one difference, the elision, the summary"
        );
    }
}
