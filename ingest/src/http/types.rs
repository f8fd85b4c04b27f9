//! Value types the API's documents share: a nullable field that is always present, a string
//! that is only a string, a money amount with two decimals, a message's direction and a stage.

use std::borrow::Cow;

use funnel_schemas::rules::Stage;
use funnel_schemas::Direction;
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::{ParseError, ParseFromJSON, ParseResult, ToJSON, Type};
use rust_decimal::{Decimal, RoundingStrategy};

/// Who wrote the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum)]
#[oai(rename_all = "lowercase")]
pub enum DirectionIn {
    Inbound,
    Outbound,
}

impl From<DirectionIn> for Direction {
    fn from(d: DirectionIn) -> Self {
        match d {
            DirectionIn::Inbound => Direction::Inbound,
            DirectionIn::Outbound => Direction::Outbound,
        }
    }
}

impl From<Direction> for DirectionIn {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Inbound => DirectionIn::Inbound,
            Direction::Outbound => DirectionIn::Outbound,
        }
    }
}

/// A funnel stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum)]
#[oai(rename_all = "lowercase")]
pub enum StageDoc {
    Lead,
    Booking,
    Transaction,
}

impl From<StageDoc> for Stage {
    fn from(s: StageDoc) -> Self {
        match s {
            StageDoc::Lead => Stage::Lead,
            StageDoc::Booking => Stage::Booking,
            StageDoc::Transaction => Stage::Transaction,
        }
    }
}

impl From<Stage> for StageDoc {
    fn from(s: Stage) -> Self {
        match s {
            Stage::Lead => StageDoc::Lead,
            Stage::Booking => StageDoc::Booking,
            Stage::Transaction => StageDoc::Transaction,
        }
    }
}

/// An optional value that is always present in responses, as `null` when absent, and is
/// documented as nullable (poem-openapi documents `Option<T>` fields as possibly missing, not as
/// null, and response validators such as schemathesis hold the API to that).
#[derive(Debug, Clone, PartialEq)]
pub struct Nullable<T>(pub Option<T>);

impl<T> Default for Nullable<T> {
    fn default() -> Self {
        Nullable(None)
    }
}

impl<T> From<Option<T>> for Nullable<T> {
    fn from(v: Option<T>) -> Self {
        Nullable(v)
    }
}

impl<T: Type> Type for Nullable<T> {
    const IS_REQUIRED: bool = true;
    type RawValueType = T::RawValueType;
    type RawElementValueType = T::RawElementValueType;

    fn name() -> Cow<'static, str> {
        format!("nullable_{}", T::name()).into()
    }
    fn schema_ref() -> MetaSchemaRef {
        use poem_openapi::registry::MetaSchema;
        let schema = match T::schema_ref() {
            MetaSchemaRef::Inline(inner) => MetaSchema {
                nullable: true,
                ..*inner
            },
            reference @ MetaSchemaRef::Reference(_) => MetaSchema {
                nullable: true,
                all_of: vec![reference],
                ..MetaSchema::ANY
            },
        };
        MetaSchemaRef::Inline(Box::new(schema))
    }
    fn register(registry: &mut Registry) {
        T::register(registry)
    }
    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        self.0.as_ref().and_then(|v| v.as_raw_value())
    }
    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        match &self.0 {
            Some(v) => v.raw_element_iter(),
            None => Box::new(std::iter::empty()),
        }
    }
}

impl<T: ParseFromJSON> ParseFromJSON for Nullable<T> {
    fn parse_from_json(value: Option<serde_json::Value>) -> ParseResult<Self> {
        match value {
            None | Some(serde_json::Value::Null) => Ok(Nullable(None)),
            v => T::parse_from_json(v)
                .map(|v| Nullable(Some(v)))
                .map_err(poem_openapi::types::ParseError::propagate),
        }
    }
}

impl<T: ToJSON> ToJSON for Nullable<T> {
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(
            self.0
                .as_ref()
                .and_then(ToJSON::to_json)
                .unwrap_or(serde_json::Value::Null),
        )
    }
}

/// A JSON string, and only a string: poem-openapi's `String` also takes numbers and booleans
/// (`"channel": false` would read "false"), which the documented schema does not allow.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Text(pub String);

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// `Type` for a value documented as a plain string (its own parsing and writing aside).
macro_rules! documented_as_string {
    ($t:ty) => {
        impl Type for $t {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> Cow<'static, str> {
                String::name()
            }
            fn schema_ref() -> MetaSchemaRef {
                String::schema_ref()
            }
            fn as_raw_value(&self) -> Option<&Self> {
                Some(self)
            }
            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }
        }
    };
}

documented_as_string!(Text);

impl ParseFromJSON for Text {
    fn parse_from_json(value: Option<serde_json::Value>) -> ParseResult<Self> {
        match value {
            Some(serde_json::Value::String(s)) => Ok(Text(s)),
            other => Err(poem_openapi::types::ParseError::expected_type(
                other.unwrap_or_default(),
            )),
        }
    }
}

impl ToJSON for Text {
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(serde_json::Value::String(self.0.clone()))
    }
}

/// A money amount with exactly two decimals (half away from zero), written as a JSON string
/// (`"150000.00"`): the form of every amount the API answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Money(Decimal);

impl Money {
    pub fn new(d: Decimal) -> Self {
        let mut d = d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
        d.rescale(2);
        Money(d)
    }
}

impl std::fmt::Display for Money {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

documented_as_string!(Money);

impl ParseFromJSON for Money {
    fn parse_from_json(value: Option<serde_json::Value>) -> ParseResult<Self> {
        match value {
            Some(serde_json::Value::String(s)) => s
                .parse::<Decimal>()
                .map(Money::new)
                .map_err(|e| ParseError::custom(format!("not an amount: {e}"))),
            other => Err(ParseError::expected_type(other.unwrap_or_default())),
        }
    }
}

impl ToJSON for Money {
    fn to_json(&self) -> Option<serde_json::Value> {
        Some(serde_json::Value::String(self.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_has_two_decimals_rounded_half_away_from_zero() {
        let m = |v: i64, scale: u32| Money::new(Decimal::new(v, scale)).to_string();
        assert_eq!(m(0, 0), "0.00");
        assert_eq!(m(150_000, 0), "150000.00");
        assert_eq!(m(25, 3), "0.03");
        assert_eq!(m(-25, 3), "-0.03");
        assert_eq!(m(33_333, 4), "3.33");
        assert_eq!(
            Money::new(Decimal::new(5, 1)).to_json(),
            Some(serde_json::Value::String("0.50".into()))
        );
    }
}
