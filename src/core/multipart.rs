//! `multipart/mixed` as the federation media endpoints use it (RFC 2046 section 5.1):
//! written by [`head`] and [`tail`], read incrementally by [`Reader`] so that a large file
//! never has to sit in memory.
//!
//! Spec: server-server API, "Content Repository", `GET /_matrix/federation/v1/media/download`
//! and `…/thumbnail`: exactly two parts, the first `application/json` metadata (an empty
//! object today), the second the media's bytes with `Content-Type` and
//! `Content-Disposition`, or a `Location` header naming where to get them.

/// The bytes before the media: the delimiter, the JSON part, the second part's headers.
pub fn head(boundary: &str, content_type: &str, disposition: &str) -> Vec<u8> {
    format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\nContent-Type: {content_type}\r\nContent-Disposition: {disposition}\r\n\r\n"
    )
    .into_bytes()
}

/// The bytes after the media: the closing delimiter.
pub fn tail(boundary: &str) -> Vec<u8> {
    format!("\r\n--{boundary}--\r\n").into_bytes()
}

/// The `boundary` parameter of a `multipart/mixed` content type.
pub fn boundary_of(content_type: &str) -> Option<String> {
    let (essence, params) = content_type.split_once(';')?;
    if !essence.trim().eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (name, value) = p.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
            .filter(|b| !b.is_empty() && b.len() <= 70)
    })
}

/// What the reader found, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// The headers of part `index` (0 or 1), names lower-cased.
    Headers(usize, Vec<(String, String)>),
    /// Bytes of part `index`'s body.
    Body(usize, Vec<u8>),
    /// The closing delimiter: nothing follows.
    End,
}

/// Why a body is not the multipart the endpoints define.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartError(pub String);

impl std::fmt::Display for MultipartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MultipartError {}

/// Longest header section of a part.
const MAX_HEADERS: usize = 8 * 1024;
/// Longest preamble before the first delimiter.
const MAX_PREAMBLE: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Preamble,
    AfterDelimiter(usize),
    Headers(usize),
    Body(usize),
    Done,
}

/// An incremental reader of a two-part `multipart/mixed` body.
pub struct Reader {
    boundary: Vec<u8>,
    buffer: Vec<u8>,
    state: State,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Reader {
    /// A reader for `boundary`.
    pub fn new(boundary: &str) -> Self {
        Self {
            boundary: format!("--{boundary}").into_bytes(),
            buffer: Vec::new(),
            state: State::Preamble,
        }
    }

    /// Whether the closing delimiter was read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds the next bytes; answers what they complete.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Piece>, MultipartError> {
        self.buffer.extend_from_slice(chunk);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Done => {
                    self.buffer.clear();
                    return Ok(out);
                }
                State::Preamble => match find(&self.buffer, &self.boundary) {
                    Some(at) => {
                        self.buffer.drain(..at + self.boundary.len());
                        self.state = State::AfterDelimiter(0);
                    }
                    None if self.buffer.len() > MAX_PREAMBLE => {
                        return Err(MultipartError("no delimiter at the start".into()))
                    }
                    None => return Ok(out),
                },
                State::AfterDelimiter(part) => {
                    if self.buffer.len() < 2 {
                        return Ok(out);
                    }
                    if self.buffer.starts_with(b"--") {
                        self.state = State::Done;
                        out.push(Piece::End);
                        continue;
                    }
                    // Transport padding (spaces, tabs) may precede the line break.
                    let Some(eol) = find(&self.buffer, b"\r\n") else {
                        if self.buffer.len() > 80 {
                            return Err(MultipartError("a delimiter line does not end".into()));
                        }
                        return Ok(out);
                    };
                    if !self.buffer[..eol].iter().all(|b| *b == b' ' || *b == b'\t') {
                        return Err(MultipartError("text after a delimiter".into()));
                    }
                    if part > 1 {
                        return Err(MultipartError("more than two parts".into()));
                    }
                    self.buffer.drain(..eol + 2);
                    self.state = State::Headers(part);
                }
                State::Headers(part) => {
                    // A part with no headers starts with the empty line at once.
                    let end = if self.buffer.starts_with(b"\r\n") {
                        Some((0, 2))
                    } else {
                        find(&self.buffer, b"\r\n\r\n").map(|at| (at, 4))
                    };
                    let Some((at, skip)) = end else {
                        if self.buffer.len() > MAX_HEADERS {
                            return Err(MultipartError("part headers are too long".into()));
                        }
                        return Ok(out);
                    };
                    let text = std::str::from_utf8(&self.buffer[..at])
                        .map_err(|_| MultipartError("part headers are not text".into()))?;
                    let mut headers = Vec::new();
                    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
                        let (name, value) = line
                            .split_once(':')
                            .ok_or_else(|| MultipartError(format!("bad header line {line:?}")))?;
                        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
                    }
                    self.buffer.drain(..at + skip);
                    out.push(Piece::Headers(part, headers));
                    self.state = State::Body(part);
                }
                State::Body(part) => {
                    let mut delimiter = b"\r\n".to_vec();
                    delimiter.extend_from_slice(&self.boundary);
                    match find(&self.buffer, &delimiter) {
                        Some(at) => {
                            if at > 0 {
                                out.push(Piece::Body(part, self.buffer[..at].to_vec()));
                            }
                            self.buffer.drain(..at + delimiter.len());
                            self.state = State::AfterDelimiter(part + 1);
                        }
                        None => {
                            // Keep what could be the start of a delimiter.
                            let keep = delimiter.len() - 1;
                            if self.buffer.len() > keep {
                                let emit = self.buffer.len() - keep;
                                out.push(Piece::Body(part, self.buffer[..emit].to_vec()));
                                self.buffer.drain(..emit);
                            }
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(pieces: &[Piece], part: usize) -> Vec<u8> {
        pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Body(i, b) if *i == part => Some(b.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    fn message(media: &[u8]) -> Vec<u8> {
        let mut all = head("b0undary", "image/png", "inline; filename=\"a.png\"");
        all.extend_from_slice(media);
        all.extend_from_slice(&tail("b0undary"));
        all
    }

    #[test]
    fn what_we_write_reads_back_whole_in_any_chunking() {
        let media: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let all = message(&media);
        for chunk in [1, 2, 7, 13, 64, 4096, all.len()] {
            let mut reader = Reader::new("b0undary");
            let mut pieces = Vec::new();
            for part in all.chunks(chunk) {
                pieces.extend(reader.feed(part).unwrap());
            }
            assert!(reader.is_done(), "chunk {chunk}");
            assert_eq!(body_of(&pieces, 0), b"{}");
            assert_eq!(body_of(&pieces, 1), media, "chunk {chunk}");
            let headers: Vec<&Vec<(String, String)>> = pieces
                .iter()
                .filter_map(|p| match p {
                    Piece::Headers(1, h) => Some(h),
                    _ => None,
                })
                .collect();
            assert_eq!(headers[0][0], ("content-type".into(), "image/png".into()));
            assert_eq!(pieces.last(), Some(&Piece::End));
        }
    }

    #[test]
    fn media_that_contains_crlf_and_dashes_is_not_cut() {
        // Pieces of the delimiter (RFC 2046 forbids the whole of it in the content).
        let media = b"\r\n--b0undar\r\n-\r\n--b0und\r\n".to_vec();
        for chunk in [1, 3, 100] {
            let mut reader = Reader::new("b0undary");
            let mut pieces = Vec::new();
            for part in message(&media).chunks(chunk) {
                pieces.extend(reader.feed(part).unwrap());
            }
            assert_eq!(body_of(&pieces, 1), media, "chunk {chunk}");
        }
    }

    #[test]
    fn a_location_part_and_the_synapse_style_answer_parse() {
        let text = "--6b3b\r\nContent-Type: application/json\r\n\r\n{}\r\n--6b3b\r\nLocation: https://cdn.example/x\r\n\r\n\r\n--6b3b--\r\n";
        let mut reader = Reader::new("6b3b");
        let pieces = reader.feed(text.as_bytes()).unwrap();
        assert!(pieces.contains(&Piece::Headers(
            1,
            vec![("location".into(), "https://cdn.example/x".into())]
        )));
        assert!(reader.is_done());
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let mut reader = Reader::new("b");
        assert!(reader.feed(&[b'x'; 9000]).is_err(), "no delimiter");
        let mut reader = Reader::new("b");
        assert!(reader.feed(b"--bX\r\n").is_err(), "text after a delimiter");
        let mut reader = Reader::new("b");
        let three = "--b\r\n\r\n1\r\n--b\r\n\r\n2\r\n--b\r\n\r\n3\r\n--b--";
        assert!(reader.feed(three.as_bytes()).is_err(), "three parts");
        let mut reader = Reader::new("b");
        let mut long = b"--b\r\nX-A: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 9000));
        assert!(reader.feed(&long).is_err(), "endless headers");
    }

    #[test]
    fn the_boundary_comes_from_the_content_type() {
        assert_eq!(
            boundary_of("multipart/mixed; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            boundary_of("Multipart/Mixed; charset=x; boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(boundary_of("multipart/form-data; boundary=abc"), None);
        assert_eq!(boundary_of("image/png"), None);
    }
}
