//! Phone numbers to E.164 with a libphonenumber port (`rlibphonenumber`), with the default
//! region for national forms; never a guess. Pure: no I/O.

use std::sync::OnceLock;

use rlibphonenumber::{PhoneNumberFormat, PHONE_NUMBER_UTIL};

pub use rlibphonenumber::Region;

/// Normalizes a phone number to E.164 with a libphonenumber port; never guesses.
///
/// `rlibphonenumber` is differentially fuzzed against Google's C++ library and parses about
/// five times faster than the `phonenumber` crate (2 µs against 10 µs a number here), without
/// a global lock; see docs/benchmarks.md.
pub fn normalize_phone(raw: &str, region: Region) -> Result<String, String> {
    // A conversation repeats its contact's phone, usually typed the same way; parsing is the
    // largest cost of validation, so results are kept in a bounded cache (per raw input and
    // region; a hit returns exactly what a parse would).
    static CACHE: OnceLock<quick_cache::sync::Cache<(Region, String), Result<String, String>>> =
        OnceLock::new();
    let cache = CACHE.get_or_init(|| quick_cache::sync::Cache::new(PHONE_CACHE_ENTRIES));
    let key = (region, raw.to_string());
    if let Some(hit) = cache.get(&key) {
        return hit;
    }
    let result = parse_phone(raw, region);
    cache.insert(key, result.clone());
    result
}

/// Entries of the normalized-phone cache (about 10 MB at most).
pub const PHONE_CACHE_ENTRIES: usize = 65_536;

fn parse_phone(raw: &str, region: Region) -> Result<String, String> {
    let util = &*PHONE_NUMBER_UTIL;
    let parsed = util
        .parse(raw, Some(region))
        .map_err(|e| format!("not a phone number: {e}"))?;
    if !util.is_valid_number(&parsed) {
        return Err("not a valid phone number".into());
    }
    Ok(util.format(&parsed, PhoneNumberFormat::E164).into_owned())
}

/// Parses a configured default region (`ID`), refusing codes that have no phone metadata.
pub fn parse_region(code: &str) -> Result<Region, String> {
    let region = Region::from_code(code).map_err(|e| format!("{code:?}: {e}"))?;
    if PHONE_NUMBER_UTIL
        .get_country_code_for_region(region)
        .is_none()
    {
        return Err(format!("{code:?} is not a region with phone numbers"));
    }
    Ok(region)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rlibphonenumber::Region as Id;

    #[test]
    fn cached_and_uncached_normalization_agree() {
        for input in [
            "0812-3456-7890",
            "0812",
            "+1 650 253 0000",
            "abc",
            "0812-3456-7890",
        ] {
            for _ in 0..2 {
                assert_eq!(
                    normalize_phone(input, Id::ID),
                    parse_phone(input, Id::ID),
                    "{input}"
                );
            }
        }
        // The region is part of the key: a national number means something else elsewhere.
        assert_eq!(
            normalize_phone("650 253 0000", Id::US).as_deref(),
            Ok("+16502530000")
        );
        assert!(normalize_phone("650 253 0000", Id::ID) != normalize_phone("650 253 0000", Id::US));
    }

    #[test]
    fn default_region_must_have_phone_metadata() {
        assert_eq!(parse_region("ID"), Ok(Id::ID));
        assert_eq!(parse_region("id"), Ok(Id::ID));
        assert!(parse_region("ZZ").is_err(), "no numbering plan");
        assert!(parse_region("IDN").is_err());
        assert!(parse_region("").is_err());
    }

    #[test]
    fn phone_forms_people_type() {
        for input in [
            "0812-3456-7890",
            "+62 812 3456 7890",
            "6281234567890",
            "(0812) 34567890",
            "+6281234567890",
        ] {
            assert_eq!(
                normalize_phone(input, Id::ID).as_deref(),
                Ok("+6281234567890"),
                "input {input:?}"
            );
        }
        assert!(normalize_phone("12", Id::ID).is_err());
        assert!(normalize_phone("not a phone", Id::ID).is_err());
    }
}
