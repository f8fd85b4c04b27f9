//! Rule sets over HTTP: read the active set (JSON or CSV), replace it (JSON list or `text/csv`),
//! and dry-run the classifier on a text. Rule sets are versioned in PostgreSQL
//! (`funnel_rule_sets`); running processors pick a new version up without a restart.

use std::collections::BTreeSet;
use std::sync::Arc;

use funnel_schemas::rules::{
    self, check, derive_id, rules_from_csv_with_lines, rules_to_csv, Classifier, MatchKindRule,
    Rule, RuleProblem, Stage,
};
use funnel_schemas::validate::FieldError;
use funnel_schemas::Direction;
use poem_openapi::payload::{Json, ParsePayload, Payload};
use poem_openapi::registry::MetaSchemaRef;
use poem_openapi::types::{MaybeUndefined, Type};
use poem_openapi::{ApiRequest, Enum, Object, OpenApi};

use crate::http::auth::{authorize, BearerAuth};
use crate::http::problem::{common_errors, ApiError, Problem};
use crate::http::types::{DirectionIn, StageDoc, Text};
use crate::queries::rules::{active, store, ActiveSet};
use crate::queries::tokens::Scope;
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum MatchDoc {
    /// Whole words or a phrase, case- and accent-insensitive
    Word,
    /// A substring of the normalized text
    Contains,
    /// A regular expression over the normalized text (lower case, no accents, punctuation as
    /// single spaces)
    Regex,
}

/// One keyword rule.
#[derive(Debug, Clone, Object)]
pub struct RuleDoc {
    /// Stable id, 1..64 characters; derived from stage and pattern when absent
    #[oai(validator(min_length = 1, max_length = 64))]
    pub id: Option<Text>,
    pub stage: StageDoc,
    /// `word` (default), `contains` or `regex`
    #[oai(rename = "match")]
    pub match_kind: Option<MatchDoc>,
    #[oai(validator(min_length = 1, max_length = 1000))]
    pub pattern: Text,
    /// Only messages of this channel (slug); any channel when absent
    #[oai(skip_serializing_if_is_none)]
    pub channel: Option<Text>,
    /// Only messages of this direction; both when absent
    #[oai(skip_serializing_if_is_none)]
    pub direction: Option<DirectionIn>,
    /// Among the rules of one stage that match, the highest priority decides (then the
    /// smallest id); default 0
    pub priority: Option<i32>,
}

impl RuleDoc {
    fn from_rule(r: &Rule) -> Self {
        RuleDoc {
            id: Some(Text(r.id.clone())),
            stage: r.stage.into(),
            match_kind: Some(match r.match_kind {
                MatchKindRule::Word => MatchDoc::Word,
                MatchKindRule::Contains => MatchDoc::Contains,
                MatchKindRule::Regex => MatchDoc::Regex,
            }),
            pattern: Text(r.pattern.clone()),
            channel: r.channel.clone().map(Text),
            direction: r.direction.map(DirectionIn::from),
            priority: Some(r.priority),
        }
    }
}

/// The active rule set of the caller's tenant.
#[derive(Debug, Object)]
pub struct RuleSetDoc {
    /// The version; every stage event records the version that classified it
    pub version: i64,
    /// The tenant that owns the set: the caller's, or `_builtin` when the caller's tenant has
    /// stored no set and is classified with Funnel's built-in starter set
    pub tenant: String,
    /// Whether the set is the built-in starter set (the tenant has stored none)
    pub inherited: bool,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The token id (or `migration`) that stored the set
    #[oai(skip_serializing_if_is_none)]
    pub created_by: Option<String>,
    pub rules: Vec<RuleDoc>,
}

/// The answer to a replace.
#[derive(Debug, Object)]
pub struct RuleSetSaved {
    pub version: i64,
    pub tenant: String,
    /// Number of rules in the set
    pub rules: u32,
    /// False when the body equals the tenant's active set: no new version was made
    pub created: bool,
}

/// A rule set as `text/csv`: header `stage,match,pattern,channel,direction,priority`, with an
/// optional leading `id` column.
#[derive(Debug, Clone)]
pub struct Csv(pub String);

impl Payload for Csv {
    const CONTENT_TYPE: &'static str = "text/csv";

    fn check_content_type(content_type: &str) -> bool {
        // `text/csv`, with or without parameters such as `; charset=utf-8`.
        content_type
            .split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/csv"))
    }

    fn schema_ref() -> MetaSchemaRef {
        String::schema_ref()
    }
}

impl ParsePayload for Csv {
    const IS_REQUIRED: bool = true;

    async fn from_request(
        request: &poem::Request,
        body: &mut poem::RequestBody,
    ) -> poem::Result<Self> {
        use poem::FromRequest;
        Ok(Csv(String::from_request(request, body).await?))
    }
}

/// A replacement rule set: a JSON list of rules, or the CSV form.
#[derive(Debug, ApiRequest)]
pub enum RulesBody {
    Json(Json<Vec<RuleDoc>>),
    Csv(Csv),
}

#[derive(Debug, Object)]
pub struct ClassifyIn {
    #[oai(validator(max_length = 65536))]
    pub text: Text,
    /// The message's channel; when absent, rules limited to a channel do not match
    pub channel: MaybeUndefined<Text>,
    /// Default `inbound`
    pub direction: MaybeUndefined<DirectionIn>,
}

#[derive(Debug, Object)]
pub struct HitDoc {
    pub stage: StageDoc,
    /// The deciding rule of the stage (highest priority, then smallest id)
    pub rule_id: String,
    /// The money value (transactions only; `0.00` when the text names no amount)
    #[oai(skip_serializing_if_is_none)]
    pub value: Option<String>,
}

#[derive(Debug, Object)]
pub struct ClassifyOut {
    pub rule_set_version: i64,
    /// The stages the message reaches
    pub stages: Vec<StageDoc>,
    /// One entry per stage with its deciding rule
    pub hits: Vec<HitDoc>,
    /// Every rule that matched and passed its filters, deciding or not
    pub matched_rule_ids: Vec<String>,
    /// The transaction value, when a transaction rule matched
    #[oai(skip_serializing_if_is_none)]
    pub value: Option<String>,
    /// The text as the rules see it
    pub normalized_text: String,
}

common_errors!(GetRulesResponse {
    /// The active rule set
    #[oai(status = 200)]
    Ok(Json<RuleSetDoc>),
});

common_errors!(GetRulesCsvResponse {
    /// The active rule set as CSV, with the `id` column; `X-Rule-Set-Version` names its version
    #[oai(status = 200, content_type = "text/csv; charset=utf-8")]
    Ok(
        poem_openapi::payload::PlainText<String>,
        #[oai(header = "X-Rule-Set-Version")] i64,
    ),
});

common_errors!(PutRulesResponse {
    /// A new version was stored and is now active
    #[oai(status = 201)]
    Created(Json<RuleSetSaved>),
    /// The body equals the active set; nothing changed
    #[oai(status = 200)]
    Unchanged(Json<RuleSetSaved>),
});

common_errors!(ClassifyResponse {
    /// What the active rules make of the text
    #[oai(status = 200)]
    Ok(Json<ClassifyOut>),
});

fn unavailable(e: sqlx::Error) -> ApiError {
    ApiError::store("rule store", e)
}

fn no_rules() -> ApiError {
    ApiError::Unavailable(Problem::unavailable(
        "no rule set",
        "neither the tenant nor the built-in starter set has a rule set; run the migrations or PUT /v1/rules",
    ))
}

fn invalid_rules(errors: Vec<FieldError>) -> ApiError {
    let mut p = Problem::new(
        422,
        "validation",
        "invalid rule set",
        format!("{} problem(s); nothing was stored", errors.len()),
    );
    p.errors = errors.into_iter().map(Into::into).collect();
    ApiError::Invalid(p)
}

fn field_error(pointer: String, p: &RuleProblem) -> FieldError {
    FieldError {
        pointer,
        detail: p.detail.clone(),
        expected: match p.field {
            "id" => "a unique id of 1..64 characters".into(),
            "pattern" => "a pattern the rule's match kind accepts".into(),
            "channel" => "a channel slug [a-z0-9_-]{1,64}".into(),
            _ => format!("1..{} rules", rules::MAX_RULES),
        },
    }
}

/// How long checking and compiling a rule set may take before the set is refused.
const COMPILE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// [`check`] on a blocking thread, given at most [`COMPILE_TIMEOUT`]: compiling is CPU work
/// the async threads must not do (bounded by the check's own limits, so this rarely bites).
async fn check_off_runtime(rules: Vec<Rule>) -> Result<(Vec<Rule>, Vec<RuleProblem>), ApiError> {
    let job = tokio::task::spawn_blocking(move || {
        let problems = check(&rules);
        (rules, problems)
    });
    match tokio::time::timeout(COMPILE_TIMEOUT, job).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => Err(ApiError::Unavailable(Problem::unavailable(
            "rule check failed",
            e.to_string(),
        ))),
        Err(_) => Err(invalid_rules(vec![FieldError {
            pointer: String::new(),
            detail: format!(
                "the set did not compile within {} s",
                COMPILE_TIMEOUT.as_secs()
            ),
            expected: "fewer or simpler rules".into(),
        }])),
    }
}

/// Rules from a JSON body: ids derived where absent, defaults filled in.
async fn rules_from_json(docs: Vec<RuleDoc>) -> Result<Vec<Rule>, ApiError> {
    let mut taken: BTreeSet<String> = docs
        .iter()
        .filter_map(|d| d.id.as_ref().map(|t| t.0.clone()))
        .collect();
    let rules: Vec<Rule> = docs
        .into_iter()
        .map(|d| {
            let stage = Stage::from(d.stage);
            let id = match d.id {
                Some(Text(id)) => id,
                None => {
                    let id = derive_id(stage, &d.pattern.0, &taken);
                    taken.insert(id.clone());
                    id
                }
            };
            Rule {
                id,
                stage,
                match_kind: match d.match_kind.unwrap_or(MatchDoc::Word) {
                    MatchDoc::Word => MatchKindRule::Word,
                    MatchDoc::Contains => MatchKindRule::Contains,
                    MatchDoc::Regex => MatchKindRule::Regex,
                },
                pattern: d.pattern.0,
                channel: d.channel.map(|c| c.0.to_ascii_lowercase()),
                direction: d.direction.map(Direction::from),
                priority: d.priority.unwrap_or(0),
            }
        })
        .collect();
    let (rules, problems) = check_off_runtime(rules).await?;
    if problems.is_empty() {
        return Ok(rules);
    }
    Err(invalid_rules(
        problems
            .iter()
            .map(|p| {
                let pointer = if p.field.is_empty() {
                    String::new()
                } else {
                    format!("/{}/{}", p.index, p.field)
                };
                field_error(pointer, p)
            })
            .collect(),
    ))
}

/// Rules from a CSV body; problems point at `/lines/<n>` (1-based lines of the CSV).
async fn rules_from_csv_body(text: &str) -> Result<Vec<Rule>, ApiError> {
    let with_lines = rules_from_csv_with_lines(text).map_err(|e| {
        invalid_rules(vec![FieldError {
            pointer: format!("/lines/{}", e.line),
            detail: e.detail.clone(),
            expected: format!(
                "CSV with the header {} (optionally a leading id column)",
                rules::CSV_HEADER.join(",")
            ),
        }])
    })?;
    let (lines, rules): (Vec<u64>, Vec<Rule>) = with_lines.into_iter().unzip();
    let (rules, problems) = check_off_runtime(rules).await?;
    if problems.is_empty() {
        return Ok(rules);
    }
    Err(invalid_rules(
        problems
            .iter()
            .map(|p| {
                // A problem of the whole set points at no line.
                let pointer = lines
                    .get(p.index)
                    .filter(|_| !p.field.is_empty())
                    .map(|l| format!("/lines/{l}"))
                    .unwrap_or_default();
                let mut e = field_error(pointer, p);
                if !p.field.is_empty() {
                    e.detail = format!("{}: {}", p.field, e.detail);
                }
                e
            })
            .collect(),
    ))
}

pub struct RulesApi {
    pub state: Arc<AppState>,
}

impl RulesApi {
    /// The compiled classifier of a version, compiled once per version, on a blocking thread.
    async fn classifier(&self, set: &ActiveSet) -> Result<Arc<Classifier>, ApiError> {
        if let Some(c) = self.state.classifiers.get(&set.version) {
            return Ok(c);
        }
        let (version, rules) = (set.version, set.rules.clone());
        let compiled =
            tokio::task::spawn_blocking(move || Classifier::new(version, rules).map(Arc::new))
                .await
                .map_err(|e| {
                    ApiError::Unavailable(Problem::unavailable("compile failed", e.to_string()))
                })?;
        if let Ok(c) = &compiled {
            self.state.classifiers.insert(set.version, c.clone());
        }
        compiled.map_err(|e| {
            tracing::error!(version = set.version, error = %e, "stored rule set does not compile");
            ApiError::Unavailable(Problem::unavailable(
                "stored rule set does not compile",
                format!("version {}: {e}; PUT a corrected set", set.version),
            ))
        })
    }
}

#[OpenApi]
impl RulesApi {
    /// The active rule set (scope `read`)
    ///
    /// The caller's tenant's own set, or Funnel's built-in starter set when it has stored none.
    #[oai(path = "/v1/rules", method = "get")]
    async fn get_rules(&self, auth: BearerAuth) -> GetRulesResponse {
        let principal = match authorize(&self.state, &auth, Scope::Read).await {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        match active(&self.state.db, &principal.tenant).await {
            Ok(Some(set)) => GetRulesResponse::Ok(Json(RuleSetDoc {
                version: set.version,
                inherited: set.tenant != principal.tenant,
                tenant: set.tenant,
                created_at: set.created_at,
                created_by: set.created_by,
                rules: set.rules.iter().map(RuleDoc::from_rule).collect(),
            })),
            Ok(None) => no_rules().into(),
            Err(e) => unavailable(e).into(),
        }
    }

    /// The active rule set as CSV (scope `read`)
    ///
    /// The form `PUT /v1/rules` accepts with `Content-Type: text/csv`, ids included, so a
    /// round trip through a spreadsheet keeps rule ids stable.
    #[oai(path = "/v1/rules.csv", method = "get")]
    async fn get_rules_csv(&self, auth: BearerAuth) -> GetRulesCsvResponse {
        let principal = match authorize(&self.state, &auth, Scope::Read).await {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        match active(&self.state.db, &principal.tenant).await {
            Ok(Some(set)) => GetRulesCsvResponse::Ok(
                poem_openapi::payload::PlainText(rules_to_csv(&set.rules)),
                set.version,
            ),
            Ok(None) => no_rules().into(),
            Err(e) => unavailable(e).into(),
        }
    }

    /// Replace the rule set (scope `admin`)
    ///
    /// A JSON list of rules or the CSV form (`Content-Type: text/csv`). Every rule problem is
    /// listed at once (a CSV that cannot be read is answered at its first bad line), and
    /// nothing is stored unless the whole set is valid. A new version is
    /// active for new messages within the processors' poll interval (2 s by default); the
    /// messages already processed keep their classification until a replay.
    #[oai(path = "/v1/rules", method = "put")]
    async fn put_rules(&self, auth: BearerAuth, body: RulesBody) -> PutRulesResponse {
        let principal = match authorize(&self.state, &auth, Scope::Admin).await {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        let rules = match body {
            RulesBody::Json(Json(docs)) => rules_from_json(docs).await,
            RulesBody::Csv(Csv(text)) => rules_from_csv_body(&text).await,
        };
        let rules = match rules {
            Ok(r) => r,
            Err(e) => return e.into(),
        };
        match store(
            &self.state.db,
            &principal.tenant,
            &rules,
            &principal.token_id,
        )
        .await
        {
            Ok((version, created)) => {
                let saved = Json(RuleSetSaved {
                    version,
                    tenant: principal.tenant.clone(),
                    rules: rules.len() as u32,
                    created,
                });
                if created {
                    tracing::info!(tenant = %principal.tenant, version, rules = rules.len(), token = %principal.token_id, "rule set stored");
                    PutRulesResponse::Created(saved)
                } else {
                    PutRulesResponse::Unchanged(saved)
                }
            }
            Err(e) => unavailable(e).into(),
        }
    }

    /// Dry-run the active rules on a text (scope `read`)
    ///
    /// Nothing is stored or produced.
    #[oai(path = "/v1/classify", method = "post")]
    async fn classify(&self, auth: BearerAuth, body: Json<ClassifyIn>) -> ClassifyResponse {
        let principal = match authorize(&self.state, &auth, Scope::Read).await {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        // Absent fields take their defaults; null is not a value of either.
        let nulls: Vec<FieldError> = [
            (
                "channel",
                body.channel.is_null(),
                "a channel slug, or no field",
            ),
            (
                "direction",
                body.direction.is_null(),
                "inbound, outbound, or no field",
            ),
        ]
        .into_iter()
        .filter(|(_, null, _)| *null)
        .map(|(field, _, expected)| FieldError {
            pointer: format!("/{field}"),
            detail: "null".into(),
            expected: expected.into(),
        })
        .collect();
        if !nulls.is_empty() {
            return ApiError::Invalid(Problem::invalid("invalid classify request", "field", nulls))
                .into();
        }
        let set = match active(&self.state.db, &principal.tenant).await {
            Ok(Some(set)) => set,
            Ok(None) => return no_rules().into(),
            Err(e) => return unavailable(e).into(),
        };
        let classifier = match self.classifier(&set).await {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        let direction = body
            .direction
            .value()
            .copied()
            .map_or(Direction::Inbound, Direction::from);
        // No channel: only rules without a channel filter can match (no slug equals "").
        let channel = body
            .channel
            .value()
            .map(|c| c.0.to_ascii_lowercase())
            .unwrap_or_default();
        let x = classifier.explain(&body.text.0, &channel, direction);
        let money = |stage: Stage, v: rust_decimal::Decimal| {
            (stage == Stage::Transaction).then(|| format!("{:.2}", v))
        };
        ClassifyResponse::Ok(Json(ClassifyOut {
            rule_set_version: classifier.version(),
            stages: x.hits.iter().map(|h| h.stage.into()).collect(),
            value: x
                .hits
                .iter()
                .find(|h| h.stage == Stage::Transaction)
                .and_then(|h| money(h.stage, h.value)),
            hits: x
                .hits
                .iter()
                .map(|h| HitDoc {
                    stage: h.stage.into(),
                    rule_id: h.rule_id.clone(),
                    value: money(h.stage, h.value),
                })
                .collect(),
            matched_rule_ids: x.matched_rule_ids,
            normalized_text: x.normalized,
        }))
    }
}
