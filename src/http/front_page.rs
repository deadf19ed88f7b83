//! `GET /` on the client listener: a small page for a person who opens the server's
//! address in a browser, saying what is running and how to connect a client (instead of
//! a JSON 404). Not a Matrix endpoint; every value shown is escaped.

use axum::extract::State;
use axum::http::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};

use super::AppState;

/// The page.
pub async fn front_page(State(services): State<AppState>) -> Response {
    let config = &services.config;
    let server_name = escape(config.server_name.as_str());
    let homeserver_url = escape(
        config
            .well_known
            .client
            .as_deref()
            .unwrap_or("the address of this page"),
    );
    let version = env!("CARGO_PKG_VERSION");
    let registration = if config.registration.enabled {
        "Registration is open: create an account from your client."
    } else {
        "Registration is closed: ask the server's operator for an account."
    };
    let body = format!(
        r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>ourwhats on {server_name}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;line-height:1.5}}code{{background:#eee;padding:0 .2em}}</style>
</head>
<body>
<h1>A Matrix homeserver is running here</h1>
<p>This is <strong>ourwhats {version}</strong>, the Matrix homeserver for <code>{server_name}</code>.
Its users have ids like <code>@alice:{server_name}</code>.</p>
<h2>Connecting a client</h2>
<p>In Element or any other Matrix client, choose a custom homeserver and enter
<code>{homeserver_url}</code>. {registration}</p>
<p>This page is for people; clients speak the API under <code>/_matrix/</code>
(<a href="/_matrix/client/versions">supported versions</a>).</p>
</body>
</html>
"#
    );
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'",
            ),
        ],
        body,
    )
        .into_response()
}

/// Text fit for HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            escape("<b a=\"x\">&'"),
            "&lt;b a=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
