//! Money values in message texts: the first amount, in the forms the contract lists
//! (`Rp 1.500.000`, `IDR 2,500,000`, `350rb`, `1,2jt`, `2 juta`). Pure: no I/O.

use std::str::FromStr;
use std::sync::OnceLock;

use regex::Regex;
use rust_decimal::Decimal;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
