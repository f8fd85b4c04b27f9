//! The configuration reference (docs/configuration.md) generated from the binaries' clap
//! definitions, so it cannot drift: each binary has a test that renders its section and
//! compares it with the file (`FUNNEL_UPDATE_DOCS=1 cargo test` rewrites the sections).

use std::fmt::Write as _;
use std::path::PathBuf;

/// The reference of one binary: its global settings, then each subcommand's own flags.
pub fn markdown(cmd: &clap::Command) -> String {
    let mut cmd = cmd.clone();
    cmd.build();
    let mut out = String::new();
    let name = cmd.get_name().to_string();
    section(&mut out, &cmd, &name, true);
    out
}

fn section(out: &mut String, cmd: &clap::Command, path: &str, top: bool) {
    let about = cmd.get_about().map(|a| a.to_string()).unwrap_or_default();
    let _ = writeln!(out, "{} `{path}`\n", if top { "###" } else { "####" });
    if !about.is_empty() {
        let _ = writeln!(out, "{about}\n");
    }
    // Global flags are listed once, where they are declared.
    let args: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .filter(|a| top || !a.is_global_set())
        .collect();
    if !args.is_empty() {
        let _ = writeln!(out, "| flag | environment | default | meaning |");
        let _ = writeln!(out, "| --- | --- | --- | --- |");
        for a in args {
            let _ = writeln!(out, "{}", row(a));
        }
        let _ = writeln!(out);
    }
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        section(out, sub, &format!("{path} {}", sub.get_name()), false);
    }
}

fn row(a: &clap::Arg) -> String {
    let value = a
        .get_value_names()
        .and_then(|v| v.first())
        .map(|v| format!(" <{v}>"))
        .unwrap_or_else(|| format!(" <{}>", a.get_id().as_str().to_uppercase()));
    let takes_value = a.get_num_args().is_some_and(|n| n.takes_values());
    let flag = match (a.get_long(), a.is_positional()) {
        (_, true) => format!("`<{}>`", a.get_id().as_str().to_uppercase()),
        (Some(long), false) if takes_value => format!("`--{long}{value}`"),
        (Some(long), false) => format!("`--{long}`"),
        (None, false) => format!("`{}`", a.get_id()),
    };
    let env = a
        .get_env()
        .map(|e| format!("`{}`", e.to_string_lossy()))
        .unwrap_or_else(|| "-".into());
    let default = if a.is_hide_default_value_set() || !takes_value {
        "-".to_string()
    } else {
        let d: Vec<String> = a
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        match d.as_slice() {
            [] if a.is_required_set() => "required".into(),
            [] => "-".into(),
            [one] if one.is_empty() => "(empty)".into(),
            _ => format!("`{}`", d.join(",")),
        }
    };
    let help = a
        .get_long_help()
        .or(a.get_help())
        .map(|h| {
            h.to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
        .replace('|', "\\|");
    format!("| {flag} | {env} | {default} | {help} |")
}

/// The configuration reference file.
pub fn reference_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md")
}

/// Compares the section of `binary` in docs/configuration.md with what its clap definition
/// renders; with `FUNNEL_UPDATE_DOCS` set, rewrites the section instead. Err says what differs.
pub fn check(binary: &str, cmd: &clap::Command) -> Result<(), String> {
    let path = reference_path();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let begin = format!("<!-- generated from the clap definitions of {binary}: -->\n");
    let end = format!("<!-- end of {binary} -->");
    let (Some(a), Some(b)) = (text.find(&begin), text.find(&end)) else {
        return Err(format!(
            "{} lacks the markers {begin:?} and {end:?}",
            path.display()
        ));
    };
    let current = &text[a + begin.len()..b];
    let wanted = markdown(cmd);
    if current == wanted {
        return Ok(());
    }
    if std::env::var_os("FUNNEL_UPDATE_DOCS").is_some() {
        let updated = format!("{}{wanted}{}", &text[..a + begin.len()], &text[b..]);
        return std::fs::write(&path, updated)
            .map_err(|e| format!("cannot write {}: {e}", path.display()));
    }
    let first = current
        .lines()
        .zip(wanted.lines())
        .find(|(x, y)| x != y)
        .map(|(x, y)| format!("\n  file:  {x}\n  clap:  {y}"))
        .unwrap_or_else(|| "\n  (one is longer)".into());
    Err(format!(
        "the {binary} section of docs/configuration.md is out of date:{first}\n\
         regenerate it with `FUNNEL_UPDATE_DOCS=1 cargo test --workspace configuration_reference`"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction, Command};

    #[test]
    fn rows_show_flag_env_default_and_help() {
        let cmd = Command::new("tool")
            .about("Does things")
            .arg(
                Arg::new("brokers")
                    .long("brokers")
                    .env("TOOL_BROKERS")
                    .default_value("a:1")
                    .global(true)
                    .help("Where | the brokers are"),
            )
            .arg(
                Arg::new("secret")
                    .long("secret")
                    .env("TOOL_SECRET")
                    .default_value("")
                    .hide_default_value(true),
            )
            .subcommand(
                Command::new("run")
                    .about("Runs")
                    .arg(Arg::new("dry").long("dry-run").action(ArgAction::SetTrue)),
            );
        let md = markdown(&cmd);
        assert!(md.starts_with("### `tool`\n\nDoes things\n"), "{md}");
        assert!(
            md.contains(
                "| `--brokers <BROKERS>` | `TOOL_BROKERS` | `a:1` | Where \\| the brokers are |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| `--secret <SECRET>` | `TOOL_SECRET` | - |"),
            "{md}"
        );
        assert!(md.contains("#### `tool run`\n\nRuns\n"), "{md}");
        assert!(md.contains("| `--dry-run` | - | - |"), "{md}");
        assert_eq!(
            md.matches("--brokers").count(),
            1,
            "a global flag is listed where it is declared only"
        );
    }
}
