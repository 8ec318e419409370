//! `migrate`: see `migrate --help`, README.md, and the engine's docs. This crate is the only
//! one that knows about the terminal: arguments ([`args`]), what each command does over the
//! engine ([`commands`]), how results look ([`render`]), progress ([`progress`]) and the
//! questions asked before irreversible steps ([`confirm`]).

mod args;
mod commands;
mod confirm;
mod progress;
mod render;

use std::ffi::OsString;

use clap::{CommandFactory, FromArgMatches};
use trustformers_migrate::report::ErrorReport;
use trustformers_migrate::{ExitCode, MigrateError};

use args::{Cli, ColorWhen, LogFormat};

fn main() -> std::process::ExitCode {
    // A plugin worker is served before anything starts a thread. It confines itself with
    // Landlock, which binds the calling thread and the threads it starts later, never threads
    // already running: under the async runtime, the runtime's threads ran unconfined beside
    // plugin code, which can run code on another thread of its process (a signal handler).
    // The supervisor starts it as `migrate worker`, with no other argument.
    if trustformers_migrate::worker::started_as_worker() {
        init_logging(LogFormat::Text, 0);
        std::process::exit(trustformers_migrate::worker::serve());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(cli_main()),
        Err(e) => {
            render::eprint_error(&format!("cannot start the async runtime: {e}"));
            std::process::ExitCode::from(ExitCode::Internal as u8)
        }
    }
}

async fn cli_main() -> std::process::ExitCode {
    let raw: Vec<OsString> = std::env::args_os().collect();
    // Both are needed before clap has parsed anything: to colour (or not) clap's own help and
    // errors, and to answer a command line clap refuses in JSON when JSON was asked for.
    let json = raw.iter().any(|a| a == "--json");
    let color = color_flag(&raw);
    let (ours, clap_choice) = match color {
        ColorWhen::Auto => (anstream::ColorChoice::Auto, clap::ColorChoice::Auto),
        ColorWhen::Always => (anstream::ColorChoice::Always, clap::ColorChoice::Always),
        ColorWhen::Never => (anstream::ColorChoice::Never, clap::ColorChoice::Never),
    };
    render::set_color(ours);
    let parsed = Cli::command()
        .color(clap_choice)
        .try_get_matches_from(&raw)
        .and_then(|m| Cli::from_arg_matches(&m));
    let args = match parsed {
        Ok(args) => args,
        Err(e) => return usage_error(e, json),
    };
    init_logging(args.global.log_format, args.global.verbose);
    if !matches!(args.command, args::Command::Worker) {
        bounded_heap();
    }
    let code = match commands::run(args).await {
        Ok(code) => code,
        Err(e) => {
            let report = error_report(&e);
            if json {
                println!("{}", serde_json::json!({ "error": report }));
            }
            render::eprint_error(&format!("{e:#}"));
            ExitCode::from_i32(report.exit_code)
        }
    };
    std::process::ExitCode::from(code as u8)
}

/// The `--color` value, read before clap parses (last one wins, as clap would have it).
fn color_flag(raw: &[OsString]) -> ColorWhen {
    let mut when = ColorWhen::Auto;
    let mut args = raw.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        let value = match arg.strip_prefix("--color") {
            Some("") => args.next().map(|v| v.into_owned()),
            Some(rest) => rest.strip_prefix('=').map(str::to_owned),
            None => None,
        };
        when = match value.as_deref() {
            Some("always") => ColorWhen::Always,
            Some("never") => ColorWhen::Never,
            Some("auto") => ColorWhen::Auto,
            _ => when,
        };
    }
    when
}

/// A command line clap refuses: its own message on stderr, and with `--json` the same as
/// one JSON object on stdout. Help and version requests are printed as usual.
fn usage_error(e: clap::Error, json: bool) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    if json && !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let text = e.render().to_string();
        // clap's text: `error: …` and its continuation lines, a blank line, then tips, usage
        // and "For more information".
        let (head, rest) = text.split_once("\n\n").unwrap_or((&text, ""));
        let message = head
            .lines()
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(" ")
            .trim_start_matches("error: ")
            .to_owned();
        let tips: Vec<&str> = rest
            .lines()
            .filter_map(|l| l.trim().strip_prefix("tip: "))
            .collect();
        let next_step = if tips.is_empty() {
            "see `migrate --help`, or `migrate COMMAND --help` for a command's options and examples"
                .to_owned()
        } else {
            tips.join("; ")
        };
        let report = ErrorReport {
            exit_code: ExitCode::Usage as i32,
            message,
            next_step: Some(next_step),
            file: None,
        };
        println!("{}", serde_json::json!({ "error": report }));
    }
    let _ = e.print();
    std::process::ExitCode::from(e.exit_code() as u8)
}

/// The exit code, message, next step and file of an error that ended the command: the
/// engine's and the transaction layer's errors know theirs; anything else (a report that
/// cannot be written) is a plain failure.
fn error_report(e: &anyhow::Error) -> ErrorReport {
    use trustformers_migrate::transaction::Error as T;
    if let Some(m) = e.downcast_ref::<MigrateError>() {
        return m.into();
    }
    let text = format!("{e:#}");
    match e.downcast_ref::<T>() {
        Some(t) => {
            let file = match t {
                T::Invalid { path, .. } => Some(path.clone()),
                T::Locked { root, .. } | T::Interrupted { root, .. } => Some(root.clone()),
                T::Io { .. } | T::Usage { .. } | T::Remote(_) | T::Cancelled { .. } => None,
            };
            ErrorReport::new(MigrateError::exit_code_of(t), &text, file)
        }
        None => ErrorReport::new(ExitCode::Failed, &text, None),
    }
}

/// Logs go to stderr so that `--json` output on stdout stays parseable. The level: `RUST_LOG`
/// if set, else `-v` (info), `-vv` (debug), `-vvv` (trace), else warnings only. Colour only
/// where `--color` and the terminal allow it: a log redirected to a file stays plain text.
fn init_logging(format: LogFormat, verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(render::stderr_has_color())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Keeps the heap from holding on to freed buffers, so that peak memory stays flat with the
/// installation's size. glibc serves a large allocation with its own mapping, returned to the
/// system when freed, but after the first such free it raises that threshold to the freed
/// size (up to 32 MiB): from then on multi-MiB buffers (chunks of a check, zstd's jobs, batch
/// outputs) come from the heap, and the fragments they leave stay resident. On a 4 GiB
/// installation that took the supervisor's peak from 55 MiB to 73–119 MiB, varying run to
/// run. A fixed 1 MiB threshold keeps it at 55 MiB. Other C libraries have their own policies
/// and are left alone. Not in the plugin worker, whose memory is flat without it (its batch
/// buffers are reused) and whose data path would pay a page fault per fresh mapping.
fn bounded_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets an allocator parameter, under glibc's own lock, before
    // this program allocates anything large; a refusal (0) leaves glibc's default, which is
    // merely less frugal.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
