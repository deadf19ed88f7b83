//! The federation listener's TLS certificate: the configured PEM files, or a self-signed
//! certificate for the server name generated once into `<data_dir>/tls/`.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::services::server_keys::write_private;

/// PEM certificate chain and private key.
pub struct TlsFiles {
    /// The certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// The private key, PEM.
    pub key_pem: Vec<u8>,
}

/// Reads the configured certificate, or the generated one (creating it on first use).
pub fn load_or_generate(config: &Config) -> Result<TlsFiles, String> {
    let (cert_path, key_path, generate) =
        match (&config.federation.tls_cert, &config.federation.tls_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone(), false),
            _ => {
                let dir = config.data_path("tls");
                (
                    dir.join("self-signed.crt"),
                    dir.join("self-signed.key"),
                    true,
                )
            }
        };
    if generate && !cert_path.exists() {
        generate_self_signed(config, &cert_path, &key_path)?;
    }
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| format!("cannot read TLS file {}: {e}", path.display()))
    };
    Ok(TlsFiles {
        cert_pem: read(&cert_path)?,
        key_pem: read(&key_path)?,
    })
}

fn generate_self_signed(config: &Config, cert_path: &Path, key_path: &Path) -> Result<(), String> {
    let host = config
        .server_name
        .host()
        .trim_matches(|c| c == '[' || c == ']');
    let mut names = vec![host.to_owned()];
    if host != "localhost" {
        names.push("localhost".to_owned());
    }
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot generate a TLS certificate: {e}"))?;
    if let Some(dir) = cert_path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    write_private(key_path, certified.signing_key.serialize_pem().as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", key_path.display()))?;
    std::fs::write(cert_path, certified.cert.pem())
        .map_err(|e| format!("cannot write {}: {e}", cert_path.display()))?;
    tracing::warn!(
        path = %cert_path.display(),
        "generated a self-signed federation certificate; other servers will not trust it, configure federation.tls_cert for production"
    );
    Ok(())
}
