//! Configuration: the embedded TOML default, an optional file over it, then `OURWHATS_*`
//! environment variables over both.
//!
//! Every key exists in `config/homeserver.toml` (optional ones as `""`), so the default
//! doubles as the schema: an unknown key or a value of the wrong type is refused with a
//! one-line error naming the key. Environment variable names are a contract:
//! `OURWHATS_` + the key path in upper case, nested keys joined by `__`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

use crate::core::{RoomVersion, ServerName};

/// The embedded default configuration.
pub const DEFAULT_TOML: &str = include_str!("../config/homeserver.toml");

/// The prefix of environment variables that override keys.
pub const ENV_PREFIX: &str = "OURWHATS_";

/// A configuration problem, one line, naming the key or variable at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The whole server configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// The domain of our user ids.
    pub server_name: ServerName,
    /// Folder of the database, signing key and generated files.
    pub data_dir: PathBuf,
    /// Client-server API listener.
    pub client: ClientConfig,
    /// Server-server API listener.
    pub federation: FederationConfig,
    /// Who may register.
    pub registration: RegistrationConfig,
    /// Token-bucket limits.
    pub rate_limits: RateLimitConfig,
    /// Media repository limits.
    pub media: MediaConfig,
    /// Room defaults.
    pub rooms: RoomsConfig,
    /// `[presence]`.
    pub presence: PresenceConfig,
    /// `.well-known` answers.
    pub well_known: WellKnownConfig,
    /// Log output.
    pub logging: LoggingConfig,
    /// RocksDB tuning.
    pub storage: StorageConfig,
}

/// `[client]`.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Request body limit in bytes.
    pub max_body_size: u64,
    /// Open connections at most (0: what the descriptor budget allows).
    pub max_connections: u64,
    /// Time to send a complete request head, from its first byte.
    pub header_timeout: Duration,
    /// Time a request body may go without sending anything.
    pub body_idle_timeout: Duration,
    /// Time an idle kept-alive connection is kept.
    pub keep_alive_timeout: Duration,
}

/// `[federation]`.
#[derive(Debug, Clone)]
pub struct FederationConfig {
    /// Whether the federation listener is opened.
    pub enabled: bool,
    /// Listen address.
    pub listen: SocketAddr,
    /// Request body limit in bytes.
    pub max_body_size: u64,
    /// Time a request body may go without sending anything.
    pub body_idle_timeout: Duration,
    /// PEM certificate chain; `None` with `tls_key` `None`: self-signed.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Validity we announce for our signing key, in hours.
    pub key_valid_hours: u64,
    /// A PEM file of CA certificates trusted for outbound TLS besides the system's.
    pub trusted_ca: Option<PathBuf>,
    /// Whether outbound TLS certificates are verified (false: tests only).
    pub verify_tls: bool,
    /// Address ranges outbound requests may reach although private, loopback or
    /// link-local.
    pub ip_range_allowlist: Vec<IpNet>,
    /// Servers asked for other servers' keys (notaries).
    pub trusted_key_servers: Vec<ServerName>,
    /// The local address outbound federation connections come from (a multi-homed host;
    /// tests that tell servers apart by source address); `None`: the system's choice.
    pub outbound_address: Option<std::net::IpAddr>,
    /// Whether our joins through another server ask for a partial state
    /// (`send_join?omit_members=true`): the room is usable once its non-member state is
    /// in, and the member list follows in the background.
    pub partial_state_joins: bool,
    /// How long the member resync after a partial-state join waits before it starts
    /// (0 in service; tests and benchmarks use it to hold the partial-state window open).
    pub partial_state_resync_delay: std::time::Duration,
}

/// An address range, `address/prefix length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// The network's address.
    pub addr: std::net::IpAddr,
    /// The prefix length in bits.
    pub prefix: u8,
}

impl IpNet {
    /// Parses `10.0.0.0/8`, `::1/128` or a bare address (the whole address).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.parse().ok()?, None),
        };
        let max = match addr {
            std::net::IpAddr::V4(_) => 32,
            std::net::IpAddr::V6(_) => 128,
        };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// Whether `ip` is in the range (IPv4 ranges also hold IPv4-mapped IPv6 addresses).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `[registration]`.
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// Whether `/register` creates accounts.
    pub enabled: bool,
    /// Registration token required by the `m.login.registration_token` stage.
    pub token: Option<String>,
    /// Whether guest accounts may register.
    pub allow_guests: bool,
}

/// `[rate_limits]`.
#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// Whether limits apply at all.
    pub enabled: bool,
    /// Login attempts refilled per minute, per client IP.
    pub login_per_minute: u32,
    /// Login bucket size.
    pub login_burst: u32,
    /// Registrations refilled per minute, per client IP.
    pub register_per_minute: u32,
    /// Registration bucket size.
    pub register_burst: u32,
    /// Events refilled per second, per user.
    pub message_per_second: u32,
    /// Event bucket size.
    pub message_burst: u32,
    /// Rooms created refilled per minute, per user.
    pub room_create_per_minute: u32,
    /// Room creation bucket size.
    pub room_create_burst: u32,
    /// Joins and knocks through other servers refilled per minute, per user.
    pub remote_join_per_minute: u32,
    /// Remote-join bucket size.
    pub remote_join_burst: u32,
    /// Invites sent refilled per minute, per user.
    pub invite_per_minute: u32,
    /// Invites-sent bucket size.
    pub invite_burst: u32,
    /// Invites received refilled per minute, per user of ours (from anyone).
    pub invites_received_per_minute: u32,
    /// Invites-received bucket size.
    pub invites_received_burst: u32,
    /// Requests from one other server per second (after their signature is checked).
    pub federation_per_second: u32,
    /// Federation bucket size.
    pub federation_burst: u32,
}

/// `[media]`.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Uploads one user may have in progress at once.
    pub max_uploads_per_user: u64,
    /// Largest upload in bytes.
    pub max_upload_size: u64,
    /// Largest image (pixels) thumbnails are made from.
    pub max_thumbnail_pixels: u64,
    /// Whether the deprecated unauthenticated download/thumbnail endpoints serve media.
    pub legacy_unauthenticated: bool,
}

/// `[rooms]`.
#[derive(Debug, Clone)]
pub struct RoomsConfig {
    /// Version of new rooms.
    pub default_version: RoomVersion,
}

/// `[presence]`.
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// Whether presence is tracked and shared.
    pub enabled: bool,
}

/// `[well_known]`.
#[derive(Debug, Clone)]
pub struct WellKnownConfig {
    /// `m.homeserver.base_url`, if served.
    pub client: Option<String>,
    /// `m.server`, if served.
    pub server: Option<String>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[logging]`.
#[derive(Debug, Clone)]
pub struct LoggingConfig {
    /// Line format.
    pub format: LogFormat,
    /// A `tracing_subscriber::EnvFilter` directive.
    pub level: String,
}

/// `[storage]`.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// RocksDB block cache in bytes.
    pub cache_size: u64,
    /// Memtables of all tables together, in bytes.
    pub write_buffer_size: u64,
    /// Table files RocksDB keeps open at most.
    pub max_open_files: u64,
    /// Whether the tables' index and filter blocks live in the block cache (bounded by
    /// `cache_size`, slower) instead of with each open table file.
    pub index_in_cache: bool,
}

impl Config {
    /// The embedded default, unchanged.
    pub fn embedded_default() -> Self {
        let table = default_table();
        Self::from_table(&table).expect("the embedded default configuration is valid")
    }

    /// Loads the configuration: the embedded default, the file at `path` over it (if any),
    /// then the `OURWHATS_*` variables among `env` over both.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = default_table();
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!("cannot read config file {}: {e}", path.display()))
            })?;
            let file: Table = text.parse().map_err(|e: toml::de::Error| {
                let first_line = e.to_string().lines().last().unwrap_or("").to_owned();
                ConfigError(format!(
                    "config file {} is not valid TOML: {} ({first_line})",
                    path.display(),
                    e.message()
                ))
            })?;
            merge(&mut table, file, "")?;
        }
        apply_env(&mut table, env)?;
        Self::from_table(&table)
    }

    /// The public base URL of the client API, for messages and defaults.
    pub fn data_path(&self, name: &str) -> PathBuf {
        self.data_dir.join(name)
    }

    fn from_table(table: &Table) -> Result<Self, ConfigError> {
        let r = Reader(table);
        let server_name = r.string("server_name")?;
        let server_name = ServerName::parse(&server_name)
            .map_err(|e| ConfigError(format!("config key `server_name`: {e}")))?;
        let data_dir = r.string("data_dir")?;
        if data_dir.is_empty() {
            return Err(ConfigError(
                "config key `data_dir`: must not be empty".into(),
            ));
        }
        let tls_cert = r.optional_string("federation.tls_cert")?.map(PathBuf::from);
        let tls_key = r.optional_string("federation.tls_key")?.map(PathBuf::from);
        if tls_cert.is_some() != tls_key.is_some() {
            return Err(ConfigError(
                "config keys `federation.tls_cert` and `federation.tls_key`: set both or neither"
                    .into(),
            ));
        }
        let default_version = r.string("rooms.default_version")?;
        let default_version = RoomVersion::from_id(&default_version).ok_or_else(|| {
            ConfigError(format!(
                "config key `rooms.default_version`: unsupported room version {default_version:?} (supported: 3 to 12)"
            ))
        })?;
        let format = match r.string("logging.format")?.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError(format!(
                    "config key `logging.format`: expected \"text\" or \"json\", got {other:?}"
                )))
            }
        };
        Ok(Self {
            server_name,
            data_dir: PathBuf::from(data_dir),
            client: ClientConfig {
                listen: r.socket_addr("client.listen")?,
                max_body_size: r.size("client.max_body_size")?,
                max_connections: r.u64("client.max_connections", 0)?,
                header_timeout: r.seconds("client.header_timeout_secs")?,
                body_idle_timeout: r.seconds("client.body_idle_timeout_secs")?,
                keep_alive_timeout: r.seconds("client.keep_alive_timeout_secs")?,
            },
            federation: FederationConfig {
                enabled: r.bool("federation.enabled")?,
                listen: r.socket_addr("federation.listen")?,
                max_body_size: r.size("federation.max_body_size")?,
                body_idle_timeout: r.seconds("federation.body_idle_timeout_secs")?,
                tls_cert,
                tls_key,
                key_valid_hours: r.u64("federation.key_valid_hours", 1)?,
                trusted_ca: r.optional_string("federation.trusted_ca")?.map(PathBuf::from),
                verify_tls: r.bool("federation.verify_tls")?,
                ip_range_allowlist: r
                    .strings("federation.ip_range_allowlist")?
                    .iter()
                    .map(|s| {
                        IpNet::parse(s).ok_or_else(|| {
                            ConfigError(format!(
                                "config key `federation.ip_range_allowlist`: {s:?} is not an address range like 127.0.0.0/8"
                            ))
                        })
                    })
                    .collect::<Result<_, _>>()?,
                trusted_key_servers: r
                    .strings("federation.trusted_key_servers")?
                    .iter()
                    .map(|s| {
                        ServerName::parse(s).map_err(|e| {
                            ConfigError(format!(
                                "config key `federation.trusted_key_servers`: {s:?}: {e}"
                            ))
                        })
                    })
                    .collect::<Result<_, _>>()?,
                outbound_address: r
                    .optional_string("federation.outbound_address")?
                    .map(|s| {
                        s.parse().map_err(|_| {
                            ConfigError(format!(
                                "config key `federation.outbound_address`: {s:?} is not an IP address"
                            ))
                        })
                    })
                    .transpose()?,
                partial_state_joins: r.bool("federation.partial_state_joins")?,
                partial_state_resync_delay: std::time::Duration::from_millis(
                    r.u64("federation.partial_state_resync_delay_ms", 0)?,
                ),
            },
            registration: RegistrationConfig {
                enabled: r.bool("registration.enabled")?,
                token: r.optional_string("registration.token")?,
                allow_guests: r.bool("registration.allow_guests")?,
            },
            rate_limits: RateLimitConfig {
                enabled: r.bool("rate_limits.enabled")?,
                login_per_minute: r.u32("rate_limits.login_per_minute")?,
                login_burst: r.u32("rate_limits.login_burst")?,
                register_per_minute: r.u32("rate_limits.register_per_minute")?,
                register_burst: r.u32("rate_limits.register_burst")?,
                message_per_second: r.u32("rate_limits.message_per_second")?,
                message_burst: r.u32("rate_limits.message_burst")?,
                room_create_per_minute: r.u32("rate_limits.room_create_per_minute")?,
                room_create_burst: r.u32("rate_limits.room_create_burst")?,
                remote_join_per_minute: r.u32("rate_limits.remote_join_per_minute")?,
                remote_join_burst: r.u32("rate_limits.remote_join_burst")?,
                invite_per_minute: r.u32("rate_limits.invite_per_minute")?,
                invite_burst: r.u32("rate_limits.invite_burst")?,
                invites_received_per_minute: r.u32("rate_limits.invites_received_per_minute")?,
                invites_received_burst: r.u32("rate_limits.invites_received_burst")?,
                federation_per_second: r.u32("rate_limits.federation_per_second")?,
                federation_burst: r.u32("rate_limits.federation_burst")?,
            },
            media: MediaConfig {
                max_uploads_per_user: r.u64("media.max_uploads_per_user", 1)?,
                max_upload_size: r.size("media.max_upload_size")?,
                max_thumbnail_pixels: r.u64("media.max_thumbnail_pixels", 1)?,
                legacy_unauthenticated: r.bool("media.legacy_unauthenticated")?,
            },
            rooms: RoomsConfig { default_version },
            presence: PresenceConfig {
                enabled: r.bool("presence.enabled")?,
            },
            well_known: WellKnownConfig {
                client: r.optional_string("well_known.client")?,
                server: r.optional_string("well_known.server")?,
            },
            logging: LoggingConfig {
                format,
                level: r.string("logging.level")?,
            },
            storage: StorageConfig {
                cache_size: r.size("storage.cache_size")?,
                write_buffer_size: r.size("storage.write_buffer_size")?,
                max_open_files: r.u64("storage.max_open_files", 16)?,
                index_in_cache: r.bool("storage.index_in_cache")?,
            },
        })
    }
}

fn default_table() -> Table {
    DEFAULT_TOML
        .parse()
        .expect("the embedded default configuration is valid TOML")
}

/// Lays `over` onto `base`, refusing keys the default does not have and values whose type
/// differs from the default's (sizes may be given as a string or an integer).
fn merge(base: &mut Table, over: Table, path: &str) -> Result<(), ConfigError> {
    for (key, value) in over {
        let full = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        let Some(existing) = base.get_mut(&key) else {
            return Err(ConfigError(format!("unknown config key `{full}`")));
        };
        match (existing, value) {
            (Value::Table(existing), Value::Table(value)) => merge(existing, value, &full)?,
            (existing, value) => {
                check_same_type(&full, existing, &value)?;
                *existing = value;
            }
        }
    }
    Ok(())
}

fn check_same_type(key: &str, existing: &Value, value: &Value) -> Result<(), ConfigError> {
    let compatible = matches!(
        (existing, value),
        (Value::String(_), Value::String(_))
            | (Value::Integer(_), Value::Integer(_))
            | (Value::Boolean(_), Value::Boolean(_))
            | (Value::Array(_), Value::Array(_))
            | (Value::Float(_), Value::Float(_) | Value::Integer(_))
    ) || (is_size_key(key) && matches!(value, Value::Integer(_)));
    if compatible {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "config key `{key}`: expected {}, got {}",
            existing.type_str(),
            value.type_str()
        )))
    }
}

fn is_size_key(key: &str) -> bool {
    key.ends_with("_size")
}

/// Applies `OURWHATS_A__B=value` as key `a.b`, typed like the default's value.
fn apply_env(
    table: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        let key = path.join(".");
        let (last, parents) = path.split_last().expect("split yields at least one part");
        let mut current = &mut *table;
        for part in parents {
            current = match current.get_mut(part) {
                Some(Value::Table(t)) => t,
                _ => {
                    return Err(ConfigError(format!(
                        "environment variable {name} names no config key"
                    )))
                }
            };
        }
        let Some(existing) = current.get_mut(last) else {
            return Err(ConfigError(format!(
                "environment variable {name} names no config key"
            )));
        };
        let bad = |expected: &str| {
            ConfigError(format!(
                "environment variable {name} (config key `{key}`): expected {expected}, got {raw:?}"
            ))
        };
        *existing = match existing {
            Value::String(_) => Value::String(raw.clone()),
            Value::Integer(_) => Value::Integer(raw.trim().parse().map_err(|_| bad("an integer"))?),
            Value::Float(_) => Value::Float(raw.trim().parse().map_err(|_| bad("a number"))?),
            Value::Boolean(_) => Value::Boolean(match raw.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => return Err(bad("true or false")),
            }),
            // A list: comma-separated values.
            Value::Array(_) => Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(|v| Value::String(v.to_owned()))
                    .collect(),
            ),
            _ => return Err(bad("a single value, not a table")),
        };
    }
    Ok(())
}

/// Parses a size: a plain number of bytes, or a number with `K`, `M`, `G` or `T`
/// (powers of 1024), optionally followed by `B` or `iB`.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number.parse().ok()?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let factor: u64 = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// Typed reads from the merged table, with errors that name the key.
struct Reader<'a>(&'a Table);

impl Reader<'_> {
    fn value(&self, key: &str) -> Result<&Value, ConfigError> {
        let mut current = self.0;
        let mut parts = key.split('.').peekable();
        while let Some(part) = parts.next() {
            let value = current
                .get(part)
                .ok_or_else(|| ConfigError(format!("config key `{key}` is missing")))?;
            if parts.peek().is_none() {
                return Ok(value);
            }
            current = value
                .as_table()
                .ok_or_else(|| ConfigError(format!("config key `{key}`: expected a table")))?;
        }
        Err(ConfigError(format!("config key `{key}` is missing")))
    }

    fn string(&self, key: &str) -> Result<String, ConfigError> {
        self.value(key)?
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ConfigError(format!("config key `{key}`: expected a string")))
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        let list = self
            .value(key)?
            .as_array()
            .ok_or_else(|| ConfigError(format!("config key `{key}`: expected a list")))?;
        list.iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    ConfigError(format!("config key `{key}`: expected a list of strings"))
                })
            })
            .collect()
    }

    fn optional_string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        let s = self.string(key)?;
        Ok((!s.is_empty()).then_some(s))
    }

    fn bool(&self, key: &str) -> Result<bool, ConfigError> {
        self.value(key)?
            .as_bool()
            .ok_or_else(|| ConfigError(format!("config key `{key}`: expected true or false")))
    }

    fn u64(&self, key: &str, min: u64) -> Result<u64, ConfigError> {
        let n = self
            .value(key)?
            .as_integer()
            .ok_or_else(|| ConfigError(format!("config key `{key}`: expected an integer")))?;
        u64::try_from(n)
            .ok()
            .filter(|n| *n >= min)
            .ok_or_else(|| ConfigError(format!("config key `{key}`: must be at least {min}")))
    }

    /// A whole number of seconds, at least one.
    fn seconds(&self, key: &str) -> Result<Duration, ConfigError> {
        self.u64(key, 1).map(Duration::from_secs)
    }

    fn u32(&self, key: &str) -> Result<u32, ConfigError> {
        let n = self.u64(key, 0)?;
        u32::try_from(n).map_err(|_| ConfigError(format!("config key `{key}`: {n} is too large")))
    }

    fn size(&self, key: &str) -> Result<u64, ConfigError> {
        match self.value(key)? {
            Value::Integer(n) if *n >= 0 => Ok(*n as u64),
            Value::String(s) => parse_size(s).ok_or_else(|| {
                ConfigError(format!(
                    "config key `{key}`: {s:?} is not a size (bytes, or a number with K, M, G)"
                ))
            }),
            _ => Err(ConfigError(format!(
                "config key `{key}`: expected a size (bytes, or a number with K, M, G)"
            ))),
        }
    }

    fn socket_addr(&self, key: &str) -> Result<SocketAddr, ConfigError> {
        let s = self.string(key)?;
        s.parse().map_err(|_| {
            ConfigError(format!(
                "config key `{key}`: {s:?} is not an address like 127.0.0.1:8008 or [::]:8008"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn embedded_default_matches_the_issue() {
        let c = Config::embedded_default();
        assert_eq!(c.server_name.as_str(), "localhost");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.client.listen.to_string(), "127.0.0.1:8008");
        assert_eq!(c.federation.listen.to_string(), "127.0.0.1:8448");
        assert!(c.federation.enabled);
        assert_eq!(c.media.max_upload_size, 50 << 20);
        assert_eq!(c.rooms.default_version, RoomVersion::V12);
    }

    #[test]
    fn contract_environment_variables_override() {
        let c = Config::load(
            None,
            env(&[
                ("OURWHATS_SERVER_NAME", "example.org"),
                ("OURWHATS_DATA_DIR", "/tmp/x"),
                ("OURWHATS_CLIENT__LISTEN", "0.0.0.0:9000"),
                ("OURWHATS_FEDERATION__LISTEN", "[::1]:9448"),
                ("OURWHATS_FEDERATION__ENABLED", "false"),
                ("OURWHATS_REGISTRATION__ENABLED", "0"),
                ("OURWHATS_RATE_LIMITS__ENABLED", "no"),
                ("OURWHATS_MEDIA__MAX_UPLOAD_SIZE", "10M"),
                ("PATH", "/usr/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.server_name.as_str(), "example.org");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.client.listen.port(), 9000);
        assert_eq!(c.federation.listen.to_string(), "[::1]:9448");
        assert!(!c.federation.enabled);
        assert!(!c.registration.enabled);
        assert!(!c.rate_limits.enabled);
        assert_eq!(c.media.max_upload_size, 10 << 20);
        let c = Config::load(None, env(&[("OURWHATS_MEDIA__MAX_UPLOAD_SIZE", "1234")])).unwrap();
        assert_eq!(c.media.max_upload_size, 1234);
    }

    #[test]
    fn federation_lists_come_from_a_file_as_arrays_and_from_the_environment_comma_separated() {
        let c = Config::embedded_default();
        assert!(c.federation.ip_range_allowlist.is_empty());
        assert!(c.federation.trusted_key_servers.is_empty());
        assert_eq!(c.federation.outbound_address, None);
        assert!(c.federation.verify_tls);
        assert_eq!(c.federation.trusted_ca, None);
        let c = Config::load(
            None,
            env(&[
                (
                    "OURWHATS_FEDERATION__IP_RANGE_ALLOWLIST",
                    "127.0.0.0/8, ::1/128",
                ),
                ("OURWHATS_FEDERATION__TRUSTED_KEY_SERVERS", "matrix.org"),
                ("OURWHATS_FEDERATION__VERIFY_TLS", "false"),
                ("OURWHATS_FEDERATION__TRUSTED_CA", "/etc/ca.pem"),
                ("OURWHATS_FEDERATION__OUTBOUND_ADDRESS", "127.0.0.2"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.federation.outbound_address,
            Some("127.0.0.2".parse().unwrap())
        );
        let allow = &c.federation.ip_range_allowlist;
        assert_eq!(allow.len(), 2);
        assert!(allow[0].contains("127.1.2.3".parse().unwrap()));
        assert!(!allow[0].contains("128.0.0.1".parse().unwrap()));
        assert!(allow[1].contains("::1".parse().unwrap()));
        assert_eq!(c.federation.trusted_key_servers[0].as_str(), "matrix.org");
        assert!(!c.federation.verify_tls);
        assert_eq!(
            c.federation.trusted_ca.as_deref(),
            Some(Path::new("/etc/ca.pem"))
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[federation]\nip_range_allowlist = [\"10.0.0.0/8\"]\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), env(&[])).unwrap();
        assert!(c.federation.ip_range_allowlist[0].contains("10.9.9.9".parse().unwrap()));
        // A bad range names the key.
        let err = Config::load(
            None,
            env(&[("OURWHATS_FEDERATION__IP_RANGE_ALLOWLIST", "10.0.0.0/99")]),
        )
        .unwrap_err();
        assert!(err.0.contains("federation.ip_range_allowlist"), "{err}");
        std::fs::write(&path, "[federation]\nip_range_allowlist = \"10.0.0.0/8\"\n").unwrap();
        assert!(
            Config::load(Some(&path), env(&[])).is_err(),
            "a string where a list goes"
        );
    }

    #[test]
    fn bad_values_name_the_key_in_one_line() {
        let cases = [
            (
                "OURWHATS_FEDERATION__ENABLED",
                "maybe",
                "OURWHATS_FEDERATION__ENABLED",
            ),
            ("OURWHATS_CLIENT__LISTEN", "nowhere", "client.listen"),
            (
                "OURWHATS_MEDIA__MAX_UPLOAD_SIZE",
                "big",
                "media.max_upload_size",
            ),
            ("OURWHATS_SERVER_NAME", "bad name", "server_name"),
            ("OURWHATS_NO_SUCH_KEY", "1", "OURWHATS_NO_SUCH_KEY"),
            (
                "OURWHATS_ROOMS__DEFAULT_VERSION",
                "13",
                "rooms.default_version",
            ),
            (
                "OURWHATS_RATE_LIMITS__LOGIN_BURST",
                "-1",
                "rate_limits.login_burst",
            ),
        ];
        for (name, value, mentions) in cases {
            let err = Config::load(None, env(&[(name, value)])).unwrap_err();
            assert!(err.0.contains(mentions), "{name}: {err}");
            assert!(!err.0.contains('\n'), "{name}: {err}");
        }
    }

    #[test]
    fn file_values_are_checked_against_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "server_name = \"example.org\"\n[media]\nmax_upload_size = 100\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), Vec::new()).unwrap();
        assert_eq!(c.server_name.as_str(), "example.org");
        assert_eq!(c.media.max_upload_size, 100);

        std::fs::write(&path, "[federation]\nenabled = \"yes\"\n").unwrap();
        let err = Config::load(Some(&path), Vec::new()).unwrap_err();
        assert!(err.0.contains("federation.enabled"), "{err}");

        std::fs::write(&path, "[federation]\nenbled = true\n").unwrap();
        let err = Config::load(Some(&path), Vec::new()).unwrap_err();
        assert!(err.0.contains("federation.enbled"), "{err}");

        std::fs::write(&path, "server_name = \n").unwrap();
        let err = Config::load(Some(&path), Vec::new()).unwrap_err();
        assert!(!err.0.contains('\n'), "{err}");

        let err = Config::load(Some(&dir.path().join("missing.toml")), Vec::new()).unwrap_err();
        assert!(err.0.contains("missing.toml"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("512K"), Some(512 << 10));
        assert_eq!(parse_size("50M"), Some(50 << 20));
        assert_eq!(parse_size("50MiB"), Some(50 << 20));
        assert_eq!(parse_size("2gb"), Some(2 << 30));
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("5X"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }
}
