//! The README's "Programmatic use", as a program the test suite builds and runs: migrating an
//! installation from Rust through the engine's API, with no CLI in between.
//!
//! `cargo run -p trustformers-migrate --example programmatic -- ROOT` migrates ROOT to 2.1.0
//! with the plugins of the default search path (`TRUSTFORMERS_PLUGIN_DIR` among them).

use std::path::PathBuf;

use trustformers_migrate::{MigrateError, OverallStatus, VersionMigrator};

fn main() -> Result<(), MigrateError> {
    // Plugin code runs in worker processes started as this same program: serve if we are one.
    // First thing, before the async runtime starts its threads: the worker's sandbox binds
    // only the threads started after it (`#[tokio::main]` would start them before).
    trustformers_migrate::worker::serve_if_worker();
    let root = PathBuf::from(std::env::args().nth(1).expect("usage: programmatic ROOT"));
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| MigrateError::io("cannot start the async runtime", e))?;
    runtime.block_on(migrate(root))
}

async fn migrate(root: PathBuf) -> Result<(), MigrateError> {
    let migrator = VersionMigrator::new("0.1.0", "2.1.0")?; // "" as `from` detects it
    let info = migrator.get_migration_info()?; // path, steps, breaking changes
    println!(
        "{} hops, {} breaking changes",
        info.steps.len(),
        info.breaking_changes.len()
    );
    let result = migrator.execute_full_migration(&root).await?; // MigrationResult
    assert_eq!(result.overall_status, OverallStatus::Completed);
    for step in &result.steps {
        println!("{} {:?} {} ms", step.name, step.status, step.duration_ms);
    }
    // How plugin code was confined, in every worker it ran in (describing and staging).
    if let Some(isolation) = &result.isolation {
        println!(
            "isolation {}",
            serde_json::to_string(isolation).unwrap_or_default()
        );
    }
    Ok(())
}
