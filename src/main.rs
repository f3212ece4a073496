//! Process start: parse the config, set up logging, run the server; or `facevault verify`,
//! `facevault migrate`, `facevault admin`, `facevault import`.

use std::process::ExitCode;

use clap::Parser;
use facevault::Config;

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("verify") {
        return facevault::verify::main(std::env::args().skip(2));
    }
    if std::env::args().nth(1).as_deref() == Some("migrate") {
        return facevault::migrate::main(std::env::args().skip(2));
    }
    if std::env::args().nth(1).as_deref() == Some("admin") {
        return facevault::admin_cli::main(std::env::args().skip(2)).await;
    }
    if std::env::args().nth(1).as_deref() == Some("import") {
        return facevault::import_cli::main(std::env::args().skip(2)).await;
    }
    let config = Config::parse();
    facevault::telemetry::init(&config.log_format);
    if let Err(message) = config.validate() {
        eprintln!("facevault: invalid configuration: {message}");
        return ExitCode::from(2);
    }
    match facevault::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, source = ?std::error::Error::source(&err), "facevault stopped with an error");
            ExitCode::FAILURE
        }
    }
}
