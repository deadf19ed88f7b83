//! A made-up origin server for the benches that feed remote PDUs to the rooms service:
//! `remote.example` with a fixed test key, which knows its own key and has nothing else
//! to give. Included by `#[path]` (each bench is its own crate).

use std::collections::HashMap;

use futures_util::future::BoxFuture;
use serde_json::Value;

use ourwhats::core::pdu_checks::KnownKey;
use ourwhats::core::SigningKeyPair;
use ourwhats::services::rooms::receive::MissingSource;

/// The origin's server name.
pub const REMOTE: &str = "remote.example";

/// The origin's signing key.
pub fn remote_key() -> SigningKeyPair {
    SigningKeyPair::from_seed(&[9; 32], "r1")
}

/// The origin as a [`MissingSource`]: its own key, no events.
pub struct Origin(KnownKey, String);

impl Origin {
    pub fn new() -> Self {
        let key = remote_key();
        Origin(
            KnownKey {
                key: key.verifying_key(),
                valid_until_ts: u64::MAX,
            },
            key.key_id().to_owned(),
        )
    }
}

impl MissingSource for Origin {
    fn keys<'a>(
        &'a self,
        server: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, HashMap<String, KnownKey>> {
        Box::pin(async move {
            let mut out = HashMap::new();
            if server == REMOTE && ids.contains(&self.1) {
                out.insert(self.1.clone(), self.0);
            }
            out
        })
    }

    fn events<'a>(&'a self, _: &'a str, _: &'a [String]) -> BoxFuture<'a, Vec<Value>> {
        Box::pin(async { Vec::new() })
    }
}
