//! Keyword rules: the rule type, text normalization, the compiled classifier (one
//! Aho-Corasick automaton plus one RegexSet, so the cost per message does not grow rule by
//! rule) and money-value extraction. Pure: no I/O.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::OnceLock;

use crate::Direction;
use aho_corasick::{AhoCorasick, MatchKind};
use regex::{Regex, RegexSet, RegexSetBuilder};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Lead,
    Booking,
    Transaction,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Lead, Stage::Booking, Stage::Transaction];
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Lead => "lead",
            Stage::Booking => "booking",
            Stage::Transaction => "transaction",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchKindRule {
    /// Whole words or a phrase, case- and accent-insensitive.
    #[default]
    Word,
    /// A substring of the normalized text.
    Contains,
    /// A regular expression over the normalized text.
    Regex,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    pub stage: Stage,
    #[serde(rename = "match", default)]
    pub match_kind: MatchKindRule,
    pub pattern: String,
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub direction: Option<Direction>,
    #[serde(default)]
    pub priority: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("rule {id}: pattern is empty after normalization")]
    EmptyPattern { id: String },
    #[error("rule {id}: invalid regex: {source}")]
    Regex { id: String, source: regex::Error },
    #[error("automaton: {0}")]
    Automaton(#[from] aho_corasick::BuildError),
}

/// Lower-case, accents removed (NFKD without combining marks), every run of characters that
/// are not letters or digits collapsed to one space. Rules and messages go through the same
/// function, so `Promo!!`, `PROMO` and `prómo` all read `promo`.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.nfkd() {
        if unicode_normalization::char::is_combining_mark(c) {
            continue;
        }
        if c.is_alphanumeric() {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            out.extend(c.to_lowercase());
        } else {
            pending_space = true;
        }
    }
    out
}

/// One stage a message reached, with the rule that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageHit {
    pub stage: Stage,
    pub rule_id: String,
    /// The money amount for a transaction (0 when the text names none); 0 for other stages.
    pub value: Decimal,
}

/// A rule set compiled for matching.
pub struct Classifier {
    version: i64,
    rules: Vec<Rule>,
    automaton: AhoCorasick,
    /// For automaton pattern i: (rule index, whole-word?).
    literal_rules: Vec<(usize, bool)>,
    regex_set: RegexSet,
    regex_rules: Vec<usize>,
}

impl Classifier {
    pub fn new(version: i64, rules: Vec<Rule>) -> Result<Self, RuleError> {
        let mut literals = Vec::new();
        let mut literal_rules = Vec::new();
        let mut regexes = Vec::new();
        let mut regex_rules = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            match rule.match_kind {
                MatchKindRule::Word | MatchKindRule::Contains => {
                    let p = normalize(&rule.pattern);
                    if p.is_empty() {
                        return Err(RuleError::EmptyPattern {
                            id: rule.id.clone(),
                        });
                    }
                    literals.push(p);
                    literal_rules.push((i, rule.match_kind == MatchKindRule::Word));
                }
                MatchKindRule::Regex => {
                    regex::RegexBuilder::new(&rule.pattern)
                        .size_limit(REGEX_SIZE_LIMIT)
                        .build()
                        .map_err(|source| RuleError::Regex {
                            id: rule.id.clone(),
                            source,
                        })?;
                    regexes.push(rule.pattern.clone());
                    regex_rules.push(i);
                }
            }
        }
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&literals)?;
        let regex_set = RegexSetBuilder::new(&regexes)
            .size_limit(REGEX_SIZE_LIMIT.saturating_mul(regexes.len().max(1)))
            .build()
            .map_err(|source| RuleError::Regex {
                id: "<set>".into(),
                source,
            })?;
        Ok(Self {
            version,
            rules,
            automaton,
            literal_rules,
            regex_set,
            regex_rules,
        })
    }

    pub fn version(&self) -> i64 {
        self.version
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Indexes of the rules that match the text and pass their channel and direction filters.
    fn matching(&self, norm: &str, channel: &str, direction: Direction) -> Vec<usize> {
        let bytes = norm.as_bytes();
        let mut matched = vec![false; self.rules.len()];
        for m in self.automaton.find_overlapping_iter(norm) {
            let (rule, whole_word) = self.literal_rules[m.pattern().as_usize()];
            // The normalized text has single spaces between words, so a word boundary is the
            // text's edge or a space.
            if whole_word
                && ((m.start() > 0 && bytes[m.start() - 1] != b' ')
                    || (m.end() < bytes.len() && bytes[m.end()] != b' '))
            {
                continue;
            }
            matched[rule] = true;
        }
        for i in self.regex_set.matches(norm).iter() {
            matched[self.regex_rules[i]] = true;
        }
        (0..self.rules.len())
            .filter(|&i| {
                let rule = &self.rules[i];
                matched[i]
                    && rule.channel.as_deref().is_none_or(|c| c == channel)
                    && rule.direction.is_none_or(|d| d == direction)
            })
            .collect()
    }

    /// Every stage whose rules match, each with its deciding rule (highest priority, then
    /// smallest id) and, for transactions, the money value of the text.
    pub fn classify(&self, text: &str, channel: &str, direction: Direction) -> Vec<StageHit> {
        self.explain(text, channel, direction).hits
    }

    /// [`Classifier::classify`], plus every rule that matched (not only the deciding ones).
    pub fn explain(&self, text: &str, channel: &str, direction: Direction) -> Explanation {
        let norm = normalize(text);
        let matched = self.matching(&norm, channel, direction);
        let mut best: BTreeMap<Stage, &Rule> = BTreeMap::new();
        for rule in matched.iter().map(|&i| &self.rules[i]) {
            let better = match best.get(&rule.stage) {
                None => true,
                Some(cur) => (-rule.priority, &rule.id) < (-cur.priority, &cur.id),
            };
            if better {
                best.insert(rule.stage, rule);
            }
        }
        let hits = best
            .into_iter()
            .map(|(stage, rule)| StageHit {
                stage,
                rule_id: rule.id.clone(),
                value: if stage == Stage::Transaction {
                    money_value(text).unwrap_or(Decimal::ZERO)
                } else {
                    Decimal::ZERO
                },
            })
            .collect();
        Explanation {
            normalized: norm,
            matched_rule_ids: matched.iter().map(|&i| self.rules[i].id.clone()).collect(),
            hits,
        }
    }
}

/// What the classifier made of one text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The text as the rules see it.
    pub normalized: String,
    /// Every rule that matched and passed its filters, in rule-set order.
    pub matched_rule_ids: Vec<String>,
    /// One hit per stage reached, with the deciding rule.
    pub hits: Vec<StageHit>,
}

/// Most rules in one rule set.
pub const MAX_RULES: usize = 5_000;
/// Longest rule id and pattern.
pub const MAX_ID_CHARS: usize = 64;
pub const MAX_PATTERN_CHARS: usize = 1_000;

/// One problem of a rule set: which rule (0-based position), which field, what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProblem {
    pub index: usize,
    pub field: &'static str,
    pub detail: String,
}

fn is_slug(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Every problem of a rule set at once (an empty list: the set can be stored and compiled).
/// The API answers with all of them, so a user fixes a sheet in one round.
pub fn check(rules: &[Rule]) -> Vec<RuleProblem> {
    let mut problems = Vec::new();
    let mut push = |index, field, detail: String| {
        problems.push(RuleProblem {
            index,
            field,
            detail,
        })
    };
    if rules.is_empty() {
        push(0, "", "a rule set needs at least one rule".into());
    }
    if rules.len() > MAX_RULES {
        push(
            MAX_RULES,
            "",
            format!("{} rules; at most {MAX_RULES} are allowed", rules.len()),
        );
    }
    let mut ids = std::collections::BTreeSet::new();
    for (i, r) in rules.iter().enumerate() {
        if r.id.is_empty() || r.id.chars().count() > MAX_ID_CHARS {
            push(i, "id", format!("1..{MAX_ID_CHARS} characters"));
        } else if !ids.insert(r.id.as_str()) {
            push(
                i,
                "id",
                format!("id {:?} is used twice; ids are unique", r.id),
            );
        }
        if r.pattern.chars().count() > MAX_PATTERN_CHARS {
            push(
                i,
                "pattern",
                format!("at most {MAX_PATTERN_CHARS} characters"),
            );
        }
        match r.match_kind {
            MatchKindRule::Word | MatchKindRule::Contains => {
                if normalize(&r.pattern).is_empty() {
                    push(
                        i,
                        "pattern",
                        "a word or contains pattern needs at least one letter or digit".into(),
                    );
                }
            }
            MatchKindRule::Regex => {
                if let Err(e) = regex::RegexBuilder::new(&r.pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                {
                    push(i, "pattern", format!("a valid regular expression: {e}"));
                }
            }
        }
        if let Some(c) = &r.channel {
            if !is_slug(c) {
                push(
                    i,
                    "channel",
                    format!("channel {c:?}; expected a slug [a-z0-9_-]{{1,64}} or none"),
                );
            }
        }
    }
    problems
}

/// Compiled size limit of one regex rule (the `regex` crate's default is 10 MiB per regex).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The id of a rule that has none: `<stage>-<pattern slug>`, made unique among `taken` with a
/// `-2`, `-3`... suffix. Stable across edits that do not touch the rule.
pub fn derive_id(
    stage: Stage,
    pattern: &str,
    taken: &std::collections::BTreeSet<String>,
) -> String {
    let stem = format!("{}-{}", stage.as_str(), slug(pattern));
    let mut id = stem.clone();
    let mut n = 2;
    while taken.contains(&id) {
        id = format!("{stem}-{n}");
        n += 1;
    }
    id
}

fn money_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        // A money amount is a number with a currency prefix (Rp, IDR), a multiplier suffix
        // (rb, ribu, k, jt, juta), or thousands groups (1.500.000). Bare small numbers ("2 kali",
        // "jam 3") are not money.
        #[allow(clippy::expect_used)]
        Regex::new(
            r"(?ix)
            (?:\b(?P<cur>rp|idr)\.?\s*)?
            (?P<num>\d{1,3}(?:[.,]\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?)
            (?:\s*(?P<mul>ribu|rb|k|juta|jt)\b)?",
        )
        .expect("money regex compiles")
    })
}

/// The first money amount in a text, per the contract: groups of three digits after `.` or
/// `,` are thousands; one or two digits after the last separator are decimals; `rb`/`ribu`/`k`
/// multiply by 1 000 and `jt`/`juta` by 1 000 000.
pub fn money_value(text: &str) -> Option<Decimal> {
    for caps in money_regex().captures_iter(text) {
        let num = caps.name("num")?.as_str();
        // Reject digits glued to letters before them (`a350rb`, `x2`).
        let start = caps.get(0)?.start();
        if start > 0 && caps.name("cur").is_none() {
            let prev = text[..start].chars().next_back();
            if prev.is_some_and(|c| c.is_alphanumeric()) {
                continue;
            }
        }
        let has_groups = num.split(['.', ',']).skip(1).any(|g| g.len() == 3);
        if caps.name("cur").is_none() && caps.name("mul").is_none() && !has_groups {
            continue;
        }
        let mut value = parse_number(num)?;
        if let Some(mul) = caps.name("mul") {
            value *= match mul.as_str().to_lowercase().as_str() {
                "jt" | "juta" => Decimal::from(1_000_000),
                _ => Decimal::from(1_000),
            };
        }
        return Some(value.round_dp(2));
    }
    None
}

/// `1.500.000` -> 1500000, `1.500.000,00` -> 1500000.00, `2,500,000` -> 2500000,
/// `1,2` -> 1.2, `1.5` -> 1.5.
fn parse_number(num: &str) -> Option<Decimal> {
    let groups: Vec<&str> = num.split(['.', ',']).collect();
    let (int_groups, frac) = match groups.split_last() {
        Some((last, rest)) if !rest.is_empty() && last.len() <= 2 => (rest, Some(*last)),
        _ => (&groups[..], None),
    };
    let mut s: String = int_groups.concat();
    if let Some(f) = frac {
        s.push('.');
        s.push_str(f);
    }
    Decimal::from_str(&s).ok()
}

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

fn slug(text: &str) -> String {
    let s: String = normalize(text)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let s = s.trim_matches('-');
    s.chars().take(48).collect::<String>()
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
        let pattern = field(2).to_string();
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
            record.get(0).unwrap_or_default().to_string()
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

/// Writes rules in the contract's CSV form, with the leading `id` column.
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
            r.id.as_str(),
            r.stage.as_str(),
            kind,
            r.pattern.as_str(),
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

    fn rule(id: &str, stage: Stage, kind: MatchKindRule, pattern: &str) -> Rule {
        Rule {
            id: id.into(),
            stage,
            match_kind: kind,
            pattern: pattern.into(),
            channel: None,
            direction: None,
            priority: 0,
        }
    }

    fn stages(c: &Classifier, text: &str) -> Vec<(Stage, String)> {
        c.classify(text, "ads", Direction::Inbound)
            .into_iter()
            .map(|h| (h.stage, h.rule_id))
            .collect()
    }

    #[test]
    fn normalization_folds_case_accents_and_punctuation() {
        assert_eq!(normalize("  Prómo!!  BOOKING,ya "), "promo booking ya");
        assert_eq!(normalize("Café—Crème"), "cafe creme");
        assert_eq!(normalize(""), "");
    }

    #[test]
    fn word_rules_respect_boundaries() {
        let c = Classifier::new(
            1,
            vec![
                rule("l", Stage::Lead, MatchKindRule::Word, "promo"),
                rule("b", Stage::Booking, MatchKindRule::Word, "booking"),
                rule(
                    "t",
                    Stage::Transaction,
                    MatchKindRule::Word,
                    "sudah transfer",
                ),
            ],
        )
        .unwrap();
        let table: &[(&str, &[Stage])] = &[
            ("ada promo?", &[Stage::Lead]),
            ("PROMO", &[Stage::Lead]),
            ("prómo", &[Stage::Lead]),
            ("promosi bulan ini", &[]),
            ("booking dong", &[Stage::Booking]),
            ("mau rebooking", &[]),
            ("booking.", &[Stage::Booking]),
            ("Sudah   transfer ya", &[Stage::Transaction]),
            ("sudahtransfer", &[]),
            (
                "promo, booking, sudah transfer",
                &[Stage::Lead, Stage::Booking, Stage::Transaction],
            ),
        ];
        for (text, want) in table {
            let got: Vec<Stage> = stages(&c, text).into_iter().map(|(s, _)| s).collect();
            assert_eq!(&got, want, "text {text:?}");
        }
    }

    #[test]
    fn contains_and_regex_rules() {
        let c = Classifier::new(
            1,
            vec![
                rule("c", Stage::Lead, MatchKindRule::Contains, "promo"),
                rule(
                    "r",
                    Stage::Booking,
                    MatchKindRule::Regex,
                    r"\bjam \d{1,2}\b",
                ),
            ],
        )
        .unwrap();
        assert_eq!(stages(&c, "promosi"), vec![(Stage::Lead, "c".to_string())]);
        assert_eq!(
            stages(&c, "besok JAM 10 bisa"),
            vec![(Stage::Booking, "r".to_string())]
        );
        assert!(stages(&c, "jam berapa").is_empty());
    }

    #[test]
    fn filters_and_priority() {
        let mut inbound_only = rule("a", Stage::Lead, MatchKindRule::Word, "info");
        inbound_only.direction = Some(Direction::Inbound);
        let mut web_only = rule("b", Stage::Lead, MatchKindRule::Word, "harga");
        web_only.channel = Some("website".into());
        web_only.priority = 10;
        let c = Classifier::new(1, vec![inbound_only, web_only]).unwrap();
        assert!(c.classify("info", "ads", Direction::Outbound).is_empty());
        assert_eq!(c.classify("info", "ads", Direction::Inbound).len(), 1);
        assert!(c.classify("harga", "ads", Direction::Inbound).is_empty());
        let hits = c.classify("info harga", "website", Direction::Inbound);
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].rule_id, "b", "higher priority wins");
    }

    #[test]
    fn bad_rules_are_refused() {
        assert!(matches!(
            Classifier::new(1, vec![rule("x", Stage::Lead, MatchKindRule::Word, "!!")]),
            Err(RuleError::EmptyPattern { .. })
        ));
        assert!(matches!(
            Classifier::new(1, vec![rule("y", Stage::Lead, MatchKindRule::Regex, "(")]),
            Err(RuleError::Regex { .. })
        ));
    }

    #[test]
    fn check_names_every_problem_with_its_rule_and_field() {
        let mut web = rule("c", Stage::Lead, MatchKindRule::Word, "ok");
        web.channel = Some("Web Site".into());
        let rules = vec![
            rule("a", Stage::Lead, MatchKindRule::Word, "?!"),
            rule("a", Stage::Booking, MatchKindRule::Regex, "(x"),
            rule("", Stage::Booking, MatchKindRule::Contains, "ok"),
            web,
            rule(&"i".repeat(65), Stage::Lead, MatchKindRule::Word, "fine"),
        ];
        let got: Vec<(usize, &str)> = check(&rules).iter().map(|p| (p.index, p.field)).collect();
        assert_eq!(
            got,
            [
                (0, "pattern"),
                (1, "id"),
                (1, "pattern"),
                (2, "id"),
                (3, "channel"),
                (4, "id")
            ]
        );
        assert_eq!(check(&[]).len(), 1, "an empty set is refused");
        let fine = vec![rule("a", Stage::Lead, MatchKindRule::Word, "promo")];
        assert!(check(&fine).is_empty());
        // What check accepts, the classifier compiles.
        assert!(Classifier::new(1, fine).is_ok());
        // A regex too large to compile is refused, not compiled at any cost.
        let huge = rule(
            "h",
            Stage::Lead,
            MatchKindRule::Regex,
            r"\w{1000}\w{1000}\w{1000}",
        );
        assert_eq!(check(&[huge]).len(), 1);
    }

    #[test]
    fn derived_ids_are_stable_and_unique() {
        let mut taken = std::collections::BTreeSet::new();
        let a = derive_id(Stage::Transaction, "Sudah Transfer!", &taken);
        assert_eq!(a, "transaction-sudah-transfer");
        taken.insert(a);
        assert_eq!(
            derive_id(Stage::Transaction, "sudah transfer", &taken),
            "transaction-sudah-transfer-2"
        );
    }

    #[test]
    fn explain_lists_every_matching_rule_and_the_deciding_one() {
        let mut high = rule("z-high", Stage::Lead, MatchKindRule::Word, "harga");
        high.priority = 5;
        let c = Classifier::new(
            7,
            vec![
                rule("a-low", Stage::Lead, MatchKindRule::Word, "info"),
                high,
                rule("pay", Stage::Transaction, MatchKindRule::Contains, "lunas"),
            ],
        )
        .unwrap();
        let x = c.explain("Info HARGA, sudah lunas 2 juta", "ads", Direction::Inbound);
        assert_eq!(x.normalized, "info harga sudah lunas 2 juta");
        assert_eq!(x.matched_rule_ids, ["a-low", "z-high", "pay"]);
        assert_eq!(
            x.hits
                .iter()
                .map(|h| (h.stage, h.rule_id.as_str(), h.value))
                .collect::<Vec<_>>(),
            [
                (Stage::Lead, "z-high", Decimal::ZERO),
                (Stage::Transaction, "pay", Decimal::from(2_000_000))
            ]
        );
    }

    #[test]
    fn money_formats_of_the_contract() {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        let table: &[(&str, Option<Decimal>)] = &[
            ("sudah transfer Rp 1.500.000 ya", Some(d("1500000"))),
            ("Rp1.500.000,00", Some(d("1500000.00"))),
            ("IDR 2,500,000", Some(d("2500000"))),
            ("dp 350rb dulu", Some(d("350000"))),
            ("350 ribu", Some(d("350000"))),
            ("1,2jt", Some(d("1200000"))),
            ("1.5 juta", Some(d("1500000"))),
            ("2 juta", Some(d("2000000"))),
            ("50k", Some(d("50000"))),
            ("Rp 75.000,50", Some(d("75000.50"))),
            ("total 1.250.000 sudah", Some(d("1250000"))),
            ("sudah transfer 2 kali", None),
            ("jam 3 ya", None),
            ("lunas", None),
            ("a350rb", None),
            ("rp 10", Some(d("10"))),
            ("transfer 300rb, sisa Rp 1.000.000", Some(d("300000"))),
        ];
        for (text, want) in table {
            assert_eq!(money_value(text), *want, "text {text:?}");
        }
    }

    #[test]
    fn transaction_hits_carry_the_value() {
        let c = Classifier::new(
            1,
            vec![rule("t", Stage::Transaction, MatchKindRule::Word, "lunas")],
        )
        .unwrap();
        let hits = c.classify("Lunas Rp 2.000.000", "direct", Direction::Inbound);
        assert_eq!(hits[0].value, Decimal::from(2_000_000));
        let hits = c.classify("lunas ya kak", "direct", Direction::Inbound);
        assert_eq!(hits[0].value, Decimal::ZERO);
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
