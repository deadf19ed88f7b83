//! Pagination tokens: a point in the stream of events.
//!
//! `s{n}` is the point just after stream position `n`. `/messages` answers such tokens and
//! accepts them (and the `/sync` tokens that start the same way, `s{n}_…`); clients treat
//! them as opaque.

use crate::services::error::{ServiceError, ServiceResult};

/// The token for the point after position `pos`.
pub fn token(pos: u64) -> String {
    format!("s{pos}")
}

/// The position a token stands after; 400 `M_INVALID_PARAM` for anything else.
pub fn parse(token: &str) -> ServiceResult<u64> {
    token
        .strip_prefix('s')
        .map(|rest| rest.split('_').next().unwrap_or(""))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| ServiceError::invalid_param(format!("Invalid pagination token {token:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::error::ErrorKind;

    #[test]
    fn tokens_round_trip_and_bad_ones_are_refused() {
        assert_eq!(parse(&token(42)).unwrap(), 42);
        assert_eq!(parse("s7_3_1").unwrap(), 7);
        assert_eq!(parse("x").unwrap_err().kind, ErrorKind::Invalid);
        assert_eq!(parse("s").unwrap_err().kind, ErrorKind::Invalid);
        assert_eq!(parse("s-1").unwrap_err().kind, ErrorKind::Invalid);
    }
}
