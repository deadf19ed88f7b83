//! A room's server ACL, compiled once per `m.room.server_acl` event.
//!
//! Spec: client-server API, `m.room.server_acl`: the server name without its port is
//! judged in order: an IP literal is denied when `allow_ip_literals` is `false`; a match
//! in `deny` denies; a match in `allow` allows; anything else is denied. The lists hold
//! case-insensitive glob patterns (appendices, "Glob-style matching": `*` is any run of
//! characters, `?` one character). Compiled, the patterns are looked up rather than tried
//! one by one where their shape allows: plain names in a set, `*.suffix` patterns by the
//! name's suffixes, a lone `*` as a flag; only the rest are matched as globs.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::Value;

/// Patterns of one list, sorted by how they are matched.
#[derive(Debug, Default)]
struct Patterns {
    /// `*` alone: everything matches.
    everything: bool,
    /// Names without wildcards.
    exact: HashSet<String>,
    /// `*.rest` patterns as `.rest` (no other wildcard in `rest`).
    suffixes: HashSet<String>,
    /// Any other pattern.
    globs: Vec<String>,
}

impl Patterns {
    fn compile(list: Option<&Value>) -> Self {
        let mut out = Self::default();
        for pattern in list.and_then(Value::as_array).into_iter().flatten() {
            let Some(pattern) = pattern.as_str() else {
                continue;
            };
            let pattern = pattern.to_ascii_lowercase();
            let wild = |s: &str| s.contains(['*', '?']);
            if pattern == "*" {
                out.everything = true;
            } else if !wild(&pattern) {
                out.exact.insert(pattern);
            } else if let Some(rest) = pattern.strip_prefix('*') {
                if rest.starts_with('.') && !wild(rest) {
                    out.suffixes.insert(rest.to_owned());
                } else {
                    out.globs.push(pattern);
                }
            } else {
                out.globs.push(pattern);
            }
        }
        out
    }

    fn matches(&self, host: &str) -> bool {
        if self.everything || self.exact.contains(host) {
            return true;
        }
        if !self.suffixes.is_empty()
            && host
                .match_indices('.')
                .any(|(i, _)| self.suffixes.contains(&host[i..]))
        {
            return true;
        }
        self.globs
            .iter()
            .any(|g| glob_matches(g.as_bytes(), host.as_bytes()))
    }
}

/// A compiled `m.room.server_acl` content.
#[derive(Debug, Default)]
pub struct ServerAcl {
    allow_ip_literals: bool,
    allow: Patterns,
    deny: Patterns,
}

impl ServerAcl {
    /// Compiles the event's content (missing or malformed fields take the spec's
    /// defaults: IP literals allowed, empty lists).
    pub fn compile(content: &Value) -> Self {
        Self {
            allow_ip_literals: content
                .get("allow_ip_literals")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            allow: Patterns::compile(content.get("allow")),
            deny: Patterns::compile(content.get("deny")),
        }
    }

    /// Whether `server_name` (a port, if any, is not considered) may take part.
    pub fn allows(&self, server_name: &str) -> bool {
        let host = host_of(server_name).to_ascii_lowercase();
        if !self.allow_ip_literals && is_ip_literal(&host) {
            return false;
        }
        if self.deny.matches(&host) {
            return false;
        }
        self.allow.matches(&host)
    }
}

/// The server name without its port.
fn host_of(server_name: &str) -> &str {
    if server_name.starts_with('[') {
        return match server_name.find(']') {
            Some(end) => &server_name[..=end],
            None => server_name,
        };
    }
    match server_name.rsplit_once(':') {
        Some((host, _)) => host,
        None => server_name,
    }
}

fn is_ip_literal(host: &str) -> bool {
    host.starts_with('[') || host.parse::<Ipv4Addr>().is_ok()
}

/// Glob matching (`*` any run, `?` one character), with one backtracking point: linear in
/// practice, at worst the product of the lengths.
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_spec_order_of_checks() {
        let acl = ServerAcl::compile(&json!({
            "allow_ip_literals": false,
            "allow": ["*"],
            "deny": ["*.evil.com", "evil.com"]
        }));
        assert!(acl.allows("good.example"));
        assert!(acl.allows("good.example:8448"));
        assert!(!acl.allows("evil.com"));
        assert!(!acl.allows("evil.com:1234"), "the port is not considered");
        assert!(!acl.allows("a.b.evil.com"));
        assert!(!acl.allows("EVIL.com"), "case-insensitive");
        assert!(acl.allows("notevil.com"));
        assert!(!acl.allows("127.0.0.1:8448"));
        assert!(!acl.allows("[::1]:8448"));
    }

    #[test]
    fn defaults_allow_ip_literals_and_deny_without_an_allow_list() {
        let acl = ServerAcl::compile(&json!({}));
        assert!(!acl.allows("example.org"), "no allow list denies everyone");
        let acl = ServerAcl::compile(&json!({"allow": ["*"], "allow_ip_literals": "no"}));
        assert!(acl.allows("127.0.0.1"), "a non-boolean means true");
        let acl = ServerAcl::compile(&json!({"allow": ["example.org", 5, null]}));
        assert!(acl.allows("example.org"));
        assert!(!acl.allows("other.org"));
    }

    #[test]
    fn glob_patterns() {
        let acl = ServerAcl::compile(&json!({"allow": ["ma?rix.*", "*.org.uk", "x*y*z"]}));
        assert!(acl.allows("matrix.org"));
        assert!(acl.allows("mabrix.net"));
        assert!(!acl.allows("marix.org"));
        assert!(acl.allows("a.org.uk"));
        assert!(acl.allows("xaaybbz"));
        assert!(acl.allows("xyz"));
        assert!(!acl.allows("xyzq"));
        assert!(glob_matches(b"*", b""));
        assert!(glob_matches(b"a*b*c", b"aXbYbc"));
        assert!(!glob_matches(b"a*b*c", b"aXbYb"));
    }
}
