//! `migrate`: see `migrate --help`, README.md, and the library docs.

use clap::Parser;
use trustformers_migrate::cli::{self, Cli};
use trustformers_migrate::{ExitCode, MigrateError};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Cli::parse();
    init_logging(args.global.log_format);
    let code = match cli::run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            e.downcast_ref::<MigrateError>()
                .map_or(ExitCode::Failed, MigrateError::exit_code)
        }
    };
    std::process::ExitCode::from(code as u8)
}

/// Logs go to stderr so that `--json` output on stdout stays parseable. `RUST_LOG` sets the
/// level (default: warnings only).
fn init_logging(format: cli::LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        cli::LogFormat::Text => builder.init(),
        cli::LogFormat::Json => builder.json().init(),
    }
}
