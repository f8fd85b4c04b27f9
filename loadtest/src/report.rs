//! `funnel-loadtest report`: the funnel report of the ingest API as a table a person reads.

use serde_json::Value;

/// The query of one report.
pub struct ReportArgs<'a> {
    pub url: &'a str,
    pub token: &'a str,
    pub group_by: &'a str,
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub tz: Option<&'a str>,
    pub window_days: Option<u32>,
}

/// Fetches `GET /v1/reports/funnel` and renders it.
pub async fn fetch_and_render(a: &ReportArgs<'_>) -> anyhow::Result<String> {
    let mut query = vec![("group_by", a.group_by.to_string())];
    for (k, v) in [("from", a.from), ("to", a.to), ("tz", a.tz)] {
        if let Some(v) = v {
            query.push((k, v.to_string()));
        }
    }
    if let Some(w) = a.window_days {
        query.push(("window_days", w.to_string()));
    }
    let query: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    let res = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(120))
        .build()?
        .get(format!(
            "{}/v1/reports/funnel?{}",
            a.url.trim_end_matches('/'),
            query.join("&")
        ))
        .bearer_auth(a.token)
        .send()
        .await?;
    let status = res.status();
    let body: Value = res.json().await?;
    if !status.is_success() {
        anyhow::bail!("the report request failed with {status}: {body}");
    }
    Ok(render(&body))
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters and `/`).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `1234567.5` -> `1,234,567.50`.
fn money(s: &str) -> String {
    let (int, frac) = s.split_once('.').unwrap_or((s, "00"));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}.{frac:0<2}")
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map(|r| format!("{:.1}%", r * 100.0))
        .unwrap_or_else(|| "-".into())
}

fn hours(v: &Value) -> String {
    v.as_f64()
        .map(|h| format!("{h:.1}"))
        .unwrap_or_else(|| "-".into())
}

/// The report as an aligned text table, with a title naming its range and grouping.
pub fn render(report: &Value) -> String {
    let header = [
        "group",
        "leads",
        "booked",
        "paid",
        "revenue",
        "avg order",
        "lead>book",
        "book>paid",
        "lead>paid",
        "h to book",
        "h to pay",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in report["rows"].as_array().into_iter().flatten() {
        let group = match r["kind"].as_str() {
            Some("no_lead") => "(no lead)".to_string(),
            Some("total") => "TOTAL".to_string(),
            _ => r["group"].as_str().unwrap_or("(none)").to_string(),
        };
        lines.push(vec![
            group,
            r["leads"].to_string(),
            r["bookings"].to_string(),
            r["transactions"].to_string(),
            money(r["revenue"].as_str().unwrap_or("0")),
            r["average_order_value"]
                .as_str()
                .map(money)
                .unwrap_or_else(|| "-".into()),
            pct(&r["lead_to_booking_rate"]),
            pct(&r["booking_to_transaction_rate"]),
            pct(&r["lead_to_transaction_rate"]),
            hours(&r["median_hours_lead_to_booking"]),
            hours(&r["median_hours_lead_to_transaction"]),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let window = report["window_days"]
        .as_u64()
        .map(|w| format!(", conversions within {w} days of the lead"))
        .unwrap_or_default();
    let mut out = format!(
        "Funnel by {} from {} to {} ({}){window}; h = median hours from the lead\n",
        report["group_by"].as_str().unwrap_or("?"),
        report["from"].as_str().unwrap_or("?"),
        report["to"].as_str().unwrap_or("?"),
        report["tz"].as_str().unwrap_or("?"),
    );
    let n = lines.len();
    for (i, line) in lines.iter().enumerate() {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c == 0 {
                    format!("{cell:<w$}", w = widths[c])
                } else {
                    format!("{cell:>w$}", w = widths[c])
                }
            })
            .collect();
        // A rule under the header and above the no_lead and total rows.
        if i == n.saturating_sub(2) && n > 3 {
            out.push_str(&rule(&widths));
        }
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(&rule(&widths));
        }
    }
    out
}

fn rule(widths: &[usize]) -> String {
    let len = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
    format!("{}\n", "-".repeat(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("Etc/GMT+7"), "Etc/GMT%2B7");
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }

    #[test]
    fn money_groups_thousands() {
        assert_eq!(money("24500000.00"), "24,500,000.00");
        assert_eq!(money("500.5"), "500.50");
        assert_eq!(money("-1234.00"), "-1,234.00");
        assert_eq!(money("0.00"), "0.00");
    }

    #[test]
    fn renders_rows_aligned_with_rules() {
        let report = serde_json::json!({
            "group_by": "channel", "from": "2026-11-01", "to": "2026-11-30", "tz": "Asia/Jakarta",
            "window_days": null,
            "rows": [
                {"kind": "group", "group": "ads", "leads": 10, "bookings": 5, "transactions": 2,
                 "revenue": "3000000.00", "average_order_value": "1500000.00",
                 "lead_to_booking_rate": 0.5, "booking_to_transaction_rate": 0.4,
                 "lead_to_transaction_rate": 0.2, "median_hours_lead_to_booking": 1.25,
                 "median_hours_lead_to_transaction": null},
                {"kind": "no_lead", "group": null, "leads": 0, "bookings": 1, "transactions": 0,
                 "revenue": "0.00", "average_order_value": null, "lead_to_booking_rate": null,
                 "booking_to_transaction_rate": null, "lead_to_transaction_rate": null,
                 "median_hours_lead_to_booking": null, "median_hours_lead_to_transaction": null},
                {"kind": "total", "group": null, "leads": 10, "bookings": 5, "transactions": 2,
                 "revenue": "3000000.00", "average_order_value": "1500000.00",
                 "lead_to_booking_rate": 0.5, "booking_to_transaction_rate": 0.4,
                 "lead_to_transaction_rate": 0.2, "median_hours_lead_to_booking": 1.25,
                 "median_hours_lead_to_transaction": null}
            ]
        });
        let text = render(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("Funnel by channel from 2026-11-01 to 2026-11-30"));
        assert!(lines[1].starts_with("group"));
        assert!(lines[2].starts_with("---"));
        assert!(lines[3].starts_with("ads"));
        assert!(lines[3].contains("3,000,000.00") && lines[3].contains("50.0%"));
        assert!(lines[4].starts_with("---"));
        assert!(lines[5].starts_with("(no lead)"));
        assert!(lines[6].starts_with("TOTAL"));
        // Every data line is as wide as the header line or narrower (right-aligned numbers).
        assert_eq!(lines[3].find("10"), lines[6].find("10"));
    }
}
