//! The `ourwhats` command: run the homeserver, or manage accounts offline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ourwhats::config::Config;
use ourwhats::services::Services;
use ourwhats::Server;

/// The path `serve` and `create-user` read when no --config is given; when it does not
/// exist the embedded default is used.
const DEFAULT_CONFIG_PATH: &str = "config/homeserver.toml";

#[derive(Parser)]
#[command(name = "ourwhats", version, about = "A Matrix homeserver")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the homeserver until SIGINT or SIGTERM.
    Serve {
        /// Configuration file (default: config/homeserver.toml, else the embedded default).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Create an account (the server must not be running on the same data folder).
    CreateUser {
        /// Localpart (`alice`) or full user id (`@alice:example.org`).
        name: String,
        /// Make the account a server administrator.
        #[arg(long)]
        admin: bool,
        /// Read the password from this file (first line) instead of prompting.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Configuration file (default: config/homeserver.toml, else the embedded default).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Replace the server's signing key (stop the server first, start it after): the
    /// current key is kept as an old key, expired now, which other servers still use to
    /// check the events it signed.
    RotateKey {
        /// Configuration file (default: config/homeserver.toml, else the embedded default).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn load_config(path: Option<&Path>) -> Result<Config, String> {
    let path = match path {
        Some(p) => Some(p.to_path_buf()),
        None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
    };
    Config::load(path.as_deref(), std::env::vars()).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    ourwhats::services::memory::tune_allocator();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { config } => serve(config.as_deref()).await,
            Command::CreateUser {
                name,
                admin,
                password_file,
                config,
            } => create_user(config.as_deref(), &name, admin, password_file.as_deref()).await,
            Command::RotateKey { config } => rotate_key(config.as_deref()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config_path: Option<&Path>) -> Result<(), String> {
    let config = load_config(config_path)?;
    ourwhats::logging::init(&config.logging)?;
    // Handlers first, so a signal that arrives while starting still stops us gracefully.
    let stop = shutdown_signal()?;
    tracing::info!(server_name = %config.server_name, data_dir = %config.data_dir.display(), "starting ourwhats {}", env!("CARGO_PKG_VERSION"));
    let server = Server::start(config).await?;
    stop.await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// Resolves on SIGINT or SIGTERM; the handlers are installed when this returns.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

fn rotate_key(config_path: Option<&Path>) -> Result<(), String> {
    let config = load_config(config_path)?;
    // Refused while a server runs on this data folder (it holds the database's lock and
    // would keep signing with the key marked expired).
    drop(Services::open(config.clone())?);
    let (old, new) =
        ourwhats::services::server_keys::rotate(&config.data_dir, ourwhats::services::now_ms())?;
    println!(
        "signing key {new} replaces {old} (kept in {} as an old key); restart the server to use it",
        config
            .data_path(ourwhats::services::server_keys::OLD_SIGNING_KEYS_FILE)
            .display()
    );
    Ok(())
}

async fn create_user(
    config_path: Option<&Path>,
    name: &str,
    admin: bool,
    password_file: Option<&Path>,
) -> Result<(), String> {
    let config = load_config(config_path)?;
    let services = Services::open(config)?;
    let user_id = services
        .accounts
        .check_username_available(name)
        .map_err(|e| e.message)?;
    let password = match password_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            text.lines().next().unwrap_or("").to_owned()
        }
        None => {
            let first = rpassword::prompt_password(format!("Password for {user_id}: "))
                .map_err(|e| format!("cannot read the password: {e}"))?;
            let second = rpassword::prompt_password("Repeat the password: ")
                .map_err(|e| format!("cannot read the password: {e}"))?;
            if first != second {
                return Err("the passwords differ".into());
            }
            first
        }
    };
    if password.is_empty() {
        return Err("the password must not be empty".into());
    }
    services
        .accounts
        .create_account(&user_id, Some(&password), admin, false)
        .await
        .map_err(|e| e.message)?;
    services.db.flush().map_err(|e| e.to_string())?;
    println!("created {user_id}{}", if admin { " (admin)" } else { "" });
    Ok(())
}
