//! Other servers' media, fetched for our clients.
//!
//! Spec: server-server API, "Content Repository": `GET
//! /_matrix/federation/v1/media/download/{mediaId}` (signed), whose `multipart/mixed`
//! answer holds the bytes or a `Location` to get them from; a server that answers 404
//! `M_UNRECOGNIZED` is asked the deprecated `GET /_matrix/media/v3/download/{serverName}/
//! {mediaId}?allow_remote=false` instead. The bytes are streamed out as they arrive (the
//! multipart framing read by [`crate::core::multipart::Reader`]), for the media service to
//! store under its size limit.

use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::client::FederationError;
use super::Federation;
use crate::core::multipart::{self, Piece};
use crate::core::url::encode;
use crate::core::ServerName;

/// The bytes of a remote media, as they arrive.
pub type MediaStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// What another server gave for a media.
pub struct RemoteMedia {
    /// Its `Content-Type`, if it said.
    pub content_type: Option<String>,
    /// The file name of its `Content-Disposition`, if any.
    pub filename: Option<String>,
    /// The bytes.
    pub body: MediaStream,
}

/// The `filename` (or RFC 6266 `filename*`) of a `Content-Disposition` value.
pub fn disposition_filename(value: &str) -> Option<String> {
    let mut plain = None;
    for part in value.split(';').skip(1) {
        let Some((name, v)) = part.trim().split_once('=') else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        let v = v.trim();
        if name == "filename*" {
            let encoded = v.split_once("''").map_or(v, |(_, e)| e);
            let mut bytes = Vec::new();
            let mut it = encoded.bytes();
            while let Some(b) = it.next() {
                if b == b'%' {
                    let hex: String = it.by_ref().take(2).map(char::from).collect();
                    bytes.push(u8::from_str_radix(&hex, 16).ok()?);
                } else {
                    bytes.push(b);
                }
            }
            return String::from_utf8(bytes).ok();
        }
        if name == "filename" {
            plain = Some(v.trim_matches('"').to_owned());
        }
    }
    plain
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A raw body as a [`MediaStream`].
fn raw(response: reqwest::Response) -> RemoteMedia {
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let filename = response
        .headers()
        .get(reqwest::header::CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        .and_then(disposition_filename);
    RemoteMedia {
        content_type,
        filename,
        body: Box::pin(
            response
                .bytes_stream()
                .map(|c| c.map_err(|e| e.to_string())),
        ),
    }
}

impl Federation {
    /// The media `mxc://server/media_id`, from its server.
    pub async fn fetch_media(
        &self,
        server: &ServerName,
        media_id: &str,
    ) -> Result<RemoteMedia, FederationError> {
        let path = format!("/_matrix/federation/v1/media/download/{}", encode(media_id));
        let response = match self.client.get_stream(server, &path).await {
            Err(FederationError::Refused { status: 404, body })
                if body.get("errcode").and_then(|c| c.as_str()) == Some("M_UNRECOGNIZED") =>
            {
                let base = self.client.base_url(server).await;
                let url = format!(
                    "{base}/_matrix/media/v3/download/{}/{}?allow_remote=false",
                    encode(server.as_str()),
                    encode(media_id)
                );
                return Ok(raw(self.client.get_url_stream(&url).await?));
            }
            other => other?,
        };
        let boundary = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(multipart::boundary_of)
            .ok_or_else(|| {
                FederationError::BadResponse("the answer is not multipart/mixed".into())
            })?;
        let mut reader = multipart::Reader::new(&boundary);
        let mut upstream = response.bytes_stream();
        // Read up to the media part's headers.
        let mut first: Vec<Bytes> = Vec::new();
        let headers = loop {
            let Some(chunk) = upstream.next().await else {
                return Err(FederationError::BadResponse(
                    "the answer ended before the media".into(),
                ));
            };
            let chunk = chunk.map_err(|e| FederationError::Unreachable(e.to_string()))?;
            let pieces = reader
                .feed(&chunk)
                .map_err(|e| FederationError::BadResponse(e.0))?;
            let mut found = None;
            for piece in pieces {
                match piece {
                    Piece::Headers(1, headers) => found = Some(headers),
                    Piece::Body(1, bytes) => first.push(Bytes::from(bytes)),
                    _ => {}
                }
            }
            if let Some(headers) = found {
                break headers;
            }
        };
        if let Some(location) = header(&headers, "location") {
            return Ok(raw(self.client.get_url_stream(location).await?));
        }
        let content_type = header(&headers, "content-type").map(str::to_owned);
        let filename = header(&headers, "content-disposition").and_then(disposition_filename);
        let rest = futures_util::stream::unfold(
            (upstream, reader, false),
            |(mut upstream, mut reader, ended)| async move {
                if ended || reader.is_done() {
                    return None;
                }
                loop {
                    let chunk = match upstream.next().await {
                        None => {
                            return Some((
                                Err("the answer ended before its closing delimiter".to_owned()),
                                (upstream, reader, true),
                            ))
                        }
                        Some(Err(e)) => {
                            return Some((Err(e.to_string()), (upstream, reader, true)))
                        }
                        Some(Ok(chunk)) => chunk,
                    };
                    let pieces = match reader.feed(&chunk) {
                        Ok(pieces) => pieces,
                        Err(e) => return Some((Err(e.0), (upstream, reader, true))),
                    };
                    let bytes: Vec<u8> = pieces
                        .into_iter()
                        .filter_map(|p| match p {
                            Piece::Body(1, b) => Some(b),
                            _ => None,
                        })
                        .flatten()
                        .collect();
                    if !bytes.is_empty() || reader.is_done() {
                        return Some((Ok(Bytes::from(bytes)), (upstream, reader, false)));
                    }
                }
            },
        );
        let body = futures_util::stream::iter(first.into_iter().map(Ok)).chain(rest);
        Ok(RemoteMedia {
            content_type,
            filename,
            body: Box::pin(body),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_come_from_either_form_of_the_disposition() {
        assert_eq!(
            disposition_filename("inline; filename=\"cat.png\"").as_deref(),
            Some("cat.png")
        );
        assert_eq!(
            disposition_filename("attachment; filename=a.txt").as_deref(),
            Some("a.txt")
        );
        assert_eq!(
            disposition_filename("attachment; filename=\"x\"; filename*=utf-8''%C3%89t%C3%A9.pdf")
                .as_deref(),
            Some("Été.pdf")
        );
        assert_eq!(disposition_filename("inline"), None);
    }
}
