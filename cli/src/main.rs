//! `migrate`: see `migrate --help`, README.md, and the engine's docs. This crate is the only
//! one that knows about the terminal: arguments ([`args`]), what each command does over the
//! engine ([`commands`]), how results look ([`render`]) and progress ([`progress`]).

mod args;
mod commands;
mod progress;
mod render;

use clap::Parser;
use trustformers_migrate::{ExitCode, MigrateError};

use args::{Cli, LogFormat};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Cli::parse();
    init_logging(args.global.log_format);
    let code = match commands::run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            exit_code(&e)
        }
    };
    std::process::ExitCode::from(code as u8)
}

/// The status an error means: the engine's and the transaction layer's errors know theirs;
/// anything else (a report that cannot be written) is a plain failure.
fn exit_code(e: &anyhow::Error) -> ExitCode {
    if let Some(e) = e.downcast_ref::<MigrateError>() {
        return e.exit_code();
    }
    match e.downcast_ref::<trustformers_migrate::transaction::Error>() {
        Some(t) => MigrateError::exit_code_of(t),
        None => ExitCode::Failed,
    }
}

/// Logs go to stderr so that `--json` output on stdout stays parseable. `RUST_LOG` sets the
/// level (default: warnings only).
fn init_logging(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
