//! Log output with `tracing`: readable lines by default, JSON lines by configuration.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `logging.level`.
pub fn init(config: &LoggingConfig) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => {
            EnvFilter::try_new(&directives).map_err(|e| format!("RUST_LOG: invalid filter: {e}"))?
        }
        _ => EnvFilter::try_new(&config.level)
            .map_err(|e| format!("config key `logging.level`: invalid filter: {e}"))?,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}
