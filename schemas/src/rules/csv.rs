//! The contract's CSV form of a rule set (header `stage,match,pattern,channel,direction,priority`,
//! optionally with a leading `id` column), read and written.

use std::str::FromStr;

use super::{derive_id, MatchKindRule, Rule, Stage};
use crate::Direction;

/// The header of the contract's CSV form of a rule set. An optional leading `id` column keeps
/// rule ids stable across edits; without it, ids are derived from stage and pattern.
pub const CSV_HEADER: [&str; 6] = [
    "stage",
    "match",
    "pattern",
    "channel",
    "direction",
    "priority",
];

/// A rule set that cannot be read from CSV: the line and what was wrong with it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {detail}")]
pub struct CsvError {
    pub line: u64,
    pub detail: String,
}

/// Reads rules in the contract's CSV form. Empty `match` means `word`, empty `priority` 0,
/// empty `channel`/`direction` any.
pub fn rules_from_csv(text: &str) -> Result<Vec<Rule>, CsvError> {
    Ok(rules_from_csv_with_lines(text)?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// [`rules_from_csv`], each rule with the line it starts on (for error messages).
pub fn rules_from_csv_with_lines(text: &str) -> Result<Vec<(u64, Rule)>, CsvError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let bad = |line: u64, detail: String| CsvError { line, detail };
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| bad(1, e.to_string()))?
        .iter()
        .map(str::to_ascii_lowercase)
        .collect();
    let with_id = header.first().map(String::as_str) == Some("id");
    let columns: Vec<&str> = header
        .iter()
        .map(String::as_str)
        .skip(usize::from(with_id))
        .collect();
    if columns != CSV_HEADER {
        return Err(bad(
            1,
            format!(
                "header is {:?}; expected {} (optionally with a leading id column)",
                header.join(","),
                CSV_HEADER.join(",")
            ),
        ));
    }
    let mut rules: Vec<(u64, Rule)> = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for record in reader.records() {
        let record =
            record.map_err(|e| bad(e.position().map_or(0, csv::Position::line), e.to_string()))?;
        let line = record.position().map_or(0, csv::Position::line);
        let field = |i: usize| record.get(i + usize::from(with_id)).unwrap_or_default();
        let stage = match field(0).to_ascii_lowercase().as_str() {
            "lead" => Stage::Lead,
            "booking" => Stage::Booking,
            "transaction" => Stage::Transaction,
            other => {
                return Err(bad(
                    line,
                    format!("stage {other:?}; expected lead, booking or transaction"),
                ))
            }
        };
        let match_kind = match field(1).to_ascii_lowercase().as_str() {
            "" | "word" => MatchKindRule::Word,
            "contains" => MatchKindRule::Contains,
            "regex" => MatchKindRule::Regex,
            other => {
                return Err(bad(
                    line,
                    format!("match {other:?}; expected word, contains or regex"),
                ))
            }
        };
        let pattern = restore_cell(field(2)).to_string();
        if pattern.is_empty() {
            return Err(bad(line, "pattern is empty".into()));
        }
        let channel = Some(field(3).to_ascii_lowercase()).filter(|c| !c.is_empty());
        let direction = match field(4).to_ascii_lowercase().as_str() {
            "" => None,
            d => Some(Direction::from_str(d).map_err(|()| {
                bad(
                    line,
                    format!("direction {d:?}; expected inbound, outbound or empty"),
                )
            })?),
        };
        let priority = match field(5) {
            "" => 0,
            p => p
                .parse()
                .map_err(|_| bad(line, format!("priority {p:?}; expected an integer")))?,
        };
        let mut id = if with_id {
            restore_cell(record.get(0).unwrap_or_default()).to_string()
        } else {
            String::new()
        };
        if id.is_empty() {
            id = derive_id(stage, &pattern, &ids);
        } else if ids.contains(&id) {
            return Err(bad(line, format!("id {id:?} is used twice")));
        }
        ids.insert(id.clone());
        rules.push((
            line,
            Rule {
                id,
                stage,
                match_kind,
                pattern,
                channel,
                direction,
                priority,
            },
        ));
    }
    Ok(rules)
}

/// Characters that make a spreadsheet read a cell as a formula (OWASP CSV injection).
const FORMULA_START: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

fn escaped(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if FORMULA_START.contains(&c) => true,
        // A value that already looks neutralized gets one more quote, so reading it back with
        // [`restore_cell`] gives the value again.
        Some('\'') => chars
            .next()
            .is_some_and(|c| c == '\'' || FORMULA_START.contains(&c)),
        _ => false,
    }
}

/// A cell that came from user input, safe to open in a spreadsheet: a leading `'` when it
/// begins with `=`, `+`, `-`, `@`, tab or CR (or with a `'` before one of them).
pub fn safe_cell(s: &str) -> std::borrow::Cow<'_, str> {
    if escaped(s) {
        format!("'{s}").into()
    } else {
        s.into()
    }
}

/// The value [`safe_cell`] wrote: the one leading `'` it added goes.
pub fn restore_cell(s: &str) -> &str {
    match s.strip_prefix('\'') {
        Some(rest) if escaped(rest) => rest,
        _ => s,
    }
}

/// Writes rules in the contract's CSV form, with the leading `id` column; ids and patterns are
/// written with [`safe_cell`] (and read back with [`restore_cell`]).
pub fn rules_to_csv(rules: &[Rule]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["id"];
    header.extend(CSV_HEADER);
    // Writing to a Vec cannot fail.
    let _ = w.write_record(&header);
    for r in rules {
        let kind = match r.match_kind {
            MatchKindRule::Word => "word",
            MatchKindRule::Contains => "contains",
            MatchKindRule::Regex => "regex",
        };
        let priority = r.priority.to_string();
        let _ = w.write_record([
            &*safe_cell(&r.id),
            r.stage.as_str(),
            kind,
            &*safe_cell(&r.pattern),
            r.channel.as_deref().unwrap_or_default(),
            r.direction.map(Direction::as_str).unwrap_or_default(),
            priority.as_str(),
        ]);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralized_and_restored() {
        for (value, written) in [
            ("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"),
            ("+62", "'+62"),
            ("-1", "'-1"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("'=x", "''=x"),
            ("''", "'''"),
            ("'s", "'s"),
            ("info", "info"),
            ("", ""),
        ] {
            assert_eq!(safe_cell(value), written, "{value:?}");
            assert_eq!(restore_cell(&safe_cell(value)), value, "{value:?}");
        }
    }

    #[test]
    fn rule_csv_round_trips_formula_patterns() {
        let csv = "stage,match,pattern,channel,direction,priority\nlead,contains,=cmd,,,1\n";
        let rules = rules_from_csv(csv).unwrap();
        let written = rules_to_csv(&rules);
        assert!(written.contains(",'=cmd,"), "{written}");
        assert_eq!(rules_from_csv(&written).unwrap(), rules);
    }

    #[test]
    fn csv_rules_read_with_defaults_and_derived_ids() {
        let rules = rules_from_csv(
            "stage,match,pattern,channel,direction,priority\n\
             lead,word,Info,,inbound,100\n\
             booking,,booking,ADS,,\n\
             transaction,regex,\"lunas|paid, ok\",,outbound,-5\n\
             lead,contains,info,,,1\n",
        )
        .unwrap();
        assert_eq!(rules.len(), 4);
        assert_eq!(rules[0].id, "lead-info");
        assert_eq!(rules[0].direction, Some(Direction::Inbound));
        assert_eq!(rules[1].match_kind, MatchKindRule::Word);
        assert_eq!(rules[1].channel.as_deref(), Some("ads"));
        assert_eq!(rules[1].priority, 0);
        assert_eq!(rules[2].pattern, "lunas|paid, ok");
        assert_eq!(rules[2].priority, -5);
        assert_eq!(rules[3].id, "lead-info-2", "derived ids stay unique");
        let again = rules_from_csv(&rules_to_csv(&rules)).unwrap();
        assert_eq!(again, rules, "to_csv then from_csv is the identity");
    }

    #[test]
    fn csv_errors_name_the_line_and_what_was_expected() {
        let h = "stage,match,pattern,channel,direction,priority\n";
        let cases = [
            ("stage,pattern\n", 1, "expected stage,match,pattern"),
            (&*format!("{h}lead,word,info,,,1\nlaed,word,x,,,1\n"), 3, "expected lead, booking"),
            (&*format!("{h}lead,fuzzy,x,,,1\n"), 2, "expected word, contains or regex"),
            (&*format!("{h}lead,word,,,,1\n"), 2, "pattern is empty"),
            (&*format!("{h}lead,word,x,,sideways,1\n"), 2, "expected inbound, outbound"),
            (&*format!("{h}lead,word,x,,,high\n"), 2, "expected an integer"),
            ("id,stage,match,pattern,channel,direction,priority\na,lead,word,x,,,1\na,lead,word,y,,,1\n", 3, "used twice"),
        ];
        for (text, line, expected) in cases {
            let err = rules_from_csv(text).unwrap_err();
            assert_eq!(err.line, line, "{text:?}: {err}");
            assert!(err.detail.contains(expected), "{text:?}: {err}");
        }
    }
}
