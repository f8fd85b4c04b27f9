//! Keyword rules: the rule type, text normalization, the compiled classifier (one
//! Aho-Corasick automaton plus one RegexSet, so the cost per message does not grow rule by
//! rule), the checks a rule set must pass, and (in [`csv`]) the contract's CSV form. A
//! transaction's value comes from [`crate::money`]. Pure: no I/O.

mod csv;

use std::collections::BTreeMap;

use crate::money::money_value;
use crate::Direction;
use aho_corasick::{AhoCorasick, MatchKind};
use regex::{RegexSet, RegexSetBuilder};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

pub use self::csv::{
    restore_cell, rules_from_csv, rules_from_csv_with_lines, rules_to_csv, safe_cell, CsvError,
    CSV_HEADER,
};

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
    /// Past a bound that keeps compiling and matching cheap.
    #[error("{0}")]
    TooLarge(String),
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
    /// Compiles a rule set. Refuses sets past the bounds that keep compiling and matching
    /// cheap ([`MAX_RULES`], [`MAX_PATTERN_CHARS`], [`MAX_REGEX_RULES`], the regexes' compiled
    /// size): whatever a service would refuse to run, [`check`] refuses to store.
    pub fn new(version: i64, rules: Vec<Rule>) -> Result<Self, RuleError> {
        bounds(&rules)?;
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
            .size_limit(REGEX_SET_SIZE_LIMIT)
            .build()
            .map_err(|e| {
                RuleError::TooLarge(format!(
                    "the regular expressions together compile past {} MiB ({e}); use fewer or simpler ones",
                    REGEX_SET_SIZE_LIMIT >> 20
                ))
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
/// Most `regex` rules in one rule set (they cost more than words to compile and to match).
pub const MAX_REGEX_RULES: usize = 200;
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
            if !crate::message::is_channel(c) {
                push(
                    i,
                    "channel",
                    format!("channel {c:?}; expected a slug [a-z0-9_-]{{1,64}} or none"),
                );
            }
        }
    }
    let regexes = rules
        .iter()
        .filter(|r| r.match_kind == MatchKindRule::Regex)
        .count();
    if regexes > MAX_REGEX_RULES {
        push(
            0,
            "",
            format!("{regexes} regex rules; at most {MAX_REGEX_RULES} are allowed"),
        );
    }
    // The set as a whole: what the services compile. A set that passes here compiles there.
    if problems.is_empty() {
        if let Err(e) = Classifier::new(0, rules.to_vec()) {
            problems.push(RuleProblem {
                index: 0,
                field: "",
                detail: e.to_string(),
            });
        }
    }
    problems
}

/// Compiled size limit of one regex rule (the `regex` crate's default is 10 MiB per regex).
const REGEX_SIZE_LIMIT: usize = 256 << 10;
/// Compiled size limit of all the regex rules of a set together.
const REGEX_SET_SIZE_LIMIT: usize = 32 << 20;

/// The bounds [`Classifier::new`] enforces before compiling anything.
fn bounds(rules: &[Rule]) -> Result<(), RuleError> {
    if rules.len() > MAX_RULES {
        return Err(RuleError::TooLarge(format!(
            "{} rules; at most {MAX_RULES} are allowed",
            rules.len()
        )));
    }
    if let Some(r) = rules
        .iter()
        .find(|r| r.pattern.chars().count() > MAX_PATTERN_CHARS)
    {
        return Err(RuleError::TooLarge(format!(
            "rule {}: a pattern of at most {MAX_PATTERN_CHARS} characters",
            r.id
        )));
    }
    let regexes = rules
        .iter()
        .filter(|r| r.match_kind == MatchKindRule::Regex)
        .count();
    if regexes > MAX_REGEX_RULES {
        return Err(RuleError::TooLarge(format!(
            "{regexes} regex rules; at most {MAX_REGEX_RULES} are allowed"
        )));
    }
    Ok(())
}

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

fn slug(text: &str) -> String {
    let s: String = normalize(text)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let s = s.trim_matches('-');
    s.chars().take(48).collect::<String>()
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
    fn sets_past_the_compile_bounds_are_refused_by_check_and_by_the_classifier() {
        let regexes = |n: usize, pattern: &str| -> Vec<Rule> {
            (0..n)
                .map(|i| {
                    rule(
                        &format!("r{i}"),
                        Stage::Lead,
                        MatchKindRule::Regex,
                        &format!("{pattern}{i}"),
                    )
                })
                .collect()
        };
        let many = regexes(MAX_REGEX_RULES + 1, "x");
        assert!(matches!(
            Classifier::new(1, many.clone()),
            Err(RuleError::TooLarge(_))
        ));
        let problems = check(&many);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].detail.contains("regex rules; at most 200"));
        assert!(Classifier::new(1, regexes(MAX_REGEX_RULES, "x")).is_ok());
        // One regex past its own compiled size.
        let huge = vec![rule("big", Stage::Lead, MatchKindRule::Regex, r"\w{1000}")];
        assert!(Classifier::new(1, huge.clone()).is_err());
        assert!(check(&huge)[0].detail.contains("valid regular expression"));
        // Each small enough alone, too large together: refused as a set, by both.
        // (A Unicode `\w` alone compiles to about 49 KiB.)
        let together = regexes(MAX_REGEX_RULES, r"\w{4}");
        assert!(regex::RegexBuilder::new(&together[0].pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .is_ok());
        let err = Classifier::new(1, together.clone())
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("together")),
            "{err:?}"
        );
        let problems = check(&together);
        assert!(
            problems.iter().any(|p| p.detail.contains("together")),
            "{problems:?}"
        );
    }
}
