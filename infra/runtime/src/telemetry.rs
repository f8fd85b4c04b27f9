//! Logs (JSON when not on a terminal) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, traces
//! exported over OTLP; and the one cancellation token a process stops on.
//!
//! The log filter is `FUNNEL_LOG` when set, else `RUST_LOG`, else `info`, in `tracing`'s
//! directive syntax (`warn,funnel_processor=debug`).

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub fn init(
    service: &'static str,
) -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    let filter = log_filter(
        std::env::var("FUNNEL_LOG").ok(),
        std::env::var("RUST_LOG").ok(),
    );
    let fmt = if std::io::stderr().is_terminal() {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    };
    let provider = if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        Some(
            opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(service)
                        .build(),
                )
                .build(),
        )
    } else {
        None
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()?;
    Ok(provider)
}

/// The first of `funnel_log` and `rust_log` that is set and not empty, else `info`. A directive that does
/// not parse is left out (tracing-subscriber's own behaviour for `RUST_LOG`).
fn log_filter(funnel_log: Option<String>, rust_log: Option<String>) -> EnvFilter {
    let set = |v: Option<String>| v.filter(|d| !d.trim().is_empty());
    let directives = set(funnel_log)
        .or(set(rust_log))
        .unwrap_or_else(|| "info".into());
    EnvFilter::builder().parse_lossy(directives)
}

/// Cancels the token on SIGTERM or ctrl-c.
pub fn shutdown_on_signal(token: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! { _ = ctrl_c => {}, _ = term => {} }
        tracing::info!("shutdown requested");
        token.cancel();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn funnel_log_then_rust_log_then_info() {
        let f = |a: Option<&str>, b: Option<&str>| {
            log_filter(a.map(str::to_string), b.map(str::to_string)).to_string()
        };
        assert_eq!(f(Some("warn"), Some("debug")), "warn");
        assert_eq!(
            f(None, Some("funnel_processor=debug")),
            "funnel_processor=debug"
        );
        assert_eq!(f(None, None), "info");
        assert_eq!(f(Some(""), Some("error")), "error");
    }
}
