//! The `chatwire` command: parse, start telemetry, call the library.

use std::process::ExitCode;

use chatwire::{Application, Config, config::MockConfig, providers::mock::MockUpstream, telemetry};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "chatwire", version, about = "Streams LLM answers to socket.io-client chat apps")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the `/ai` Socket.IO namespace and the SSE wire (the default). Configured by environment variables.
    #[command(after_help = chatwire::summary::ENVIRONMENT)]
    Serve,
    /// Serve only the OpenAI-compatible mock model (MOCK_* variables set its text and speed).
    MockUpstream {
        #[arg(long, default_value_t = 8001)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
    },
    /// Run the database migrations and exit.
    Migrate,
    /// Read a password on standard input and print its bcrypt hash, for ADMIN_PASSWORD.
    HashPassword {
        /// bcrypt cost, 4 to 31: each step doubles the time one login check takes.
        #[arg(long, default_value_t = 10)]
        cost: u32,
    },
    /// Import conversations and messages from a JSON-lines file (see docs/IMPORT.md).
    Import {
        /// One message per line.
        #[arg(long, value_name = "FILE")]
        jsonl: std::path::PathBuf,
        /// Import nothing, and exit 1, when any line is bad.
        #[arg(long)]
        strict: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = dotenvy::dotenv();
    let cli = Cli::parse();
    if let Some(Command::HashPassword { cost }) = cli.command {
        return hash_password(cost);
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            // The message starts with the variable at fault (`PROVIDERS_FILE: [[providers]]
            // #2 ...`), so an operator's eye and a log filter find it first.
            eprintln!("{e}\nchatwire: configuration error, not started");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::MockUpstream { port, host } => mock(config, host, port).await,
        Command::Import { jsonl, strict } => chatwire::import::run_cli(&config, &jsonl, strict).await,
        Command::HashPassword { .. } => Ok(()),
        Command::Migrate => chatwire::store::connect(&config.database_url, config.database_max_connections, &config.database_schema)
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("chatwire: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the bcrypt hash of the first line of standard input.
fn hash_password(cost: u32) -> ExitCode {
    let mut line = String::new();
    let read = std::io::stdin().read_line(&mut line);
    let password = line.trim_end_matches(['\r', '\n']);
    if read.is_err() || password.is_empty() {
        eprintln!("chatwire: give the password on standard input: chatwire hash-password < password.txt");
        return ExitCode::from(2);
    }
    match bcrypt::hash(password, cost) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chatwire: {e}");
            ExitCode::from(2)
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    if config.is_open_mode() {
        tracing::warn!("==================================================================");
        tracing::warn!("OPEN MODE: no JWT_SECRET or JWT_PUBLIC_KEY is set.");
        tracing::warn!("Anyone can connect and act as any user. Never run this in production.");
        tracing::warn!("==================================================================");
    }
    let app = Application::build(config).await.map_err(|e| e.to_string())?;
    for (what, value) in app.summary() {
        tracing::info!("{what:>15}: {value}");
    }
    tracing::info!(addr = %app.local_addr().map_err(|e| e.to_string())?, version = env!("CARGO_PKG_VERSION"), "chatwire listening");
    app.run_until(shutdown_signal()).await.map_err(|e| e.to_string())?;
    tracing::info!("chatwire stopped");
    Ok(())
}

async fn mock(config: Config, host: std::net::IpAddr, port: u16) -> Result<(), String> {
    let mock_config = match config.upstream {
        chatwire::config::UpstreamConfig::Mock(m) => m,
        chatwire::config::UpstreamConfig::Providers(_) => MockConfig::default(),
    };
    let listener = tokio::net::TcpListener::bind((host, port)).await.map_err(|e| format!("cannot listen on {host}:{port}: {e}"))?;
    let mock = MockUpstream::spawn(listener, mock_config).map_err(|e| e.to_string())?;
    tracing::info!(base_url = %mock.base_url(), "mock upstream listening");
    shutdown_signal().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
