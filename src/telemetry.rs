//! Logging setup: `tracing` with a `tracing-subscriber` formatter and an `EnvFilter`.
//!
//! The filter comes from `RUST_LOG` (for example `RUST_LOG=debug,kube=info`); when it is unset or
//! invalid, [`DEFAULT_FILTER`] is used.

use tracing_subscriber::EnvFilter;

/// Filter used when `RUST_LOG` is unset or cannot be parsed.
pub const DEFAULT_FILTER: &str = "info,kube=warn";

/// Output format of the logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable single-line records (timestamp, level, target, message, fields).
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Builds the filter from `RUST_LOG`, falling back to [`DEFAULT_FILTER`].
pub fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// Installs the global `tracing` subscriber.
///
/// Safe to call more than once (tests do): only the first call installs a subscriber, later
/// calls are silently ignored.
pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt().with_env_filter(env_filter());
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn init_twice_is_harmless() {
        init(LogFormat::Json);
        init(LogFormat::Pretty);
        tracing::info!("still logging");
    }

    #[test]
    fn formats_parse_from_the_command_line() {
        assert_eq!(LogFormat::from_str("json", true), Ok(LogFormat::Json));
        assert_eq!(LogFormat::from_str("pretty", true), Ok(LogFormat::Pretty));
        assert!(LogFormat::from_str("xml", true).is_err());
    }

    #[test]
    fn default_filter_parses() {
        EnvFilter::try_new(DEFAULT_FILTER).expect("valid default filter");
    }
}
