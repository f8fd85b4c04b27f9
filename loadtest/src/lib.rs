//! funnel-loadtest: realistic chat traffic for Funnel, the funnel rows that traffic must
//! produce (a reference fold written for the oracle), sending it, and verifying the tables.

pub mod bench;
pub mod generate;
pub mod oracle;
pub mod procbench;
pub mod report;
pub mod send;
pub mod verify;
mod vocabulary;

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use anyhow::Context;
use funnel_schemas::rules::{rules_from_csv, Classifier, Stage};
use rust_decimal::Decimal;

use generate::{Outgoing, Traffic};
use oracle::{Expected, ExpectedRow, StageTotals};

/// The files of a dataset directory.
pub const TRAFFIC_FILE: &str = "traffic.jsonl";
pub const RULES_FILE: &str = "rules.csv";
pub const EXPECTED_FILE: &str = "expected.jsonl";
pub const STAGES_FILE: &str = "expected-stages.json";
pub const CONFIG_FILE: &str = "config.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct StageLine {
    tenant: String,
    stage: Stage,
    events: i64,
    value: Decimal,
}

/// The expected rows and stage totals of a traffic under the rules of `rules_csv`.
pub fn expect(messages: &[Outgoing], rules_csv: &str) -> anyhow::Result<Expected> {
    let rules = rules_from_csv(rules_csv).context("rules")?;
    let classifier = Classifier::new(0, rules).context("rules")?;
    Ok(oracle::expected(&oracle::events(messages)?, &classifier))
}

/// Writes a dataset: the traffic in send order, the rules it assumes, its config and the
/// expected rows and stage totals.
pub fn write_dataset(dir: &Path, traffic: &Traffic, rules_csv: &str) -> anyhow::Result<Expected> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let expected = expect(&traffic.messages, rules_csv)?;
    let mut w = BufWriter::new(std::fs::File::create(dir.join(TRAFFIC_FILE))?);
    for m in &traffic.messages {
        serde_json::to_writer(&mut w, m)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    std::fs::write(dir.join(RULES_FILE), rules_csv)?;
    std::fs::write(
        dir.join(CONFIG_FILE),
        serde_json::to_string_pretty(&traffic.config)?,
    )?;
    write_expected(dir, &expected)?;
    Ok(expected)
}

pub fn write_expected(dir: &Path, expected: &Expected) -> anyhow::Result<()> {
    let mut w = BufWriter::new(std::fs::File::create(dir.join(EXPECTED_FILE))?);
    for row in expected.rows.values() {
        serde_json::to_writer(&mut w, row)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    let stages: Vec<StageLine> = expected
        .stages
        .iter()
        .map(|((tenant, stage), t)| StageLine {
            tenant: tenant.clone(),
            stage: *stage,
            events: t.events,
            value: t.value,
        })
        .collect();
    std::fs::write(
        dir.join(STAGES_FILE),
        serde_json::to_string_pretty(&stages)?,
    )?;
    Ok(())
}

fn read_lines<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{} line {}", path.display(), i + 1))?,
        );
    }
    Ok(out)
}

/// The traffic of a dataset, in send order.
pub fn read_traffic(dir: &Path) -> anyhow::Result<Vec<Outgoing>> {
    read_lines(&dir.join(TRAFFIC_FILE))
}

/// The expected rows and stage totals of a dataset.
pub fn read_expected(dir: &Path) -> anyhow::Result<Expected> {
    let mut out = Expected::default();
    for row in read_lines::<ExpectedRow>(&dir.join(EXPECTED_FILE))? {
        out.rows
            .insert((row.tenant.clone(), row.phone.clone()), row);
    }
    let stages: Vec<StageLine> =
        serde_json::from_str(&std::fs::read_to_string(dir.join(STAGES_FILE))?)?;
    for s in stages {
        out.stages.insert(
            (s.tenant, s.stage),
            StageTotals {
                events: s.events,
                value: s.value,
            },
        );
    }
    Ok(out)
}

/// The tenants a dataset's traffic writes to.
pub fn tenants(messages: &[Outgoing]) -> Vec<String> {
    let set: std::collections::BTreeSet<&str> =
        messages.iter().map(|m| m.tenant.as_str()).collect();
    set.into_iter().map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dataset_reads_back_as_written() {
        let dir = std::env::temp_dir().join(format!("funnel-dataset-{}", std::process::id()));
        let traffic = generate::generate(&generate::GenConfig {
            seed: 9,
            contacts: 20,
            tenants: 2,
            ..generate::GenConfig::default()
        });
        let expected = write_dataset(&dir, &traffic, generate::DEFAULT_RULES_CSV).unwrap();
        assert_eq!(read_traffic(&dir).unwrap(), traffic.messages);
        assert_eq!(read_expected(&dir).unwrap(), expected);
        assert_eq!(tenants(&traffic.messages), ["default", "tenant-2"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
