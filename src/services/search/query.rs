//! Finding and ranking the events of some rooms that hold every search term.
//!
//! Each search term of [`MIN_PREFIX_CHARS`] characters or more matches the words that
//! start with it ("cat" finds "cat" and "catalogue"), like Synapse's prefix search; a
//! shorter one matches only itself, so a one-letter term doesn't read a large share of the
//! index. An event matches when it holds all the terms. Rank is BM25 (k1 = 1.2, b = 0.75) over the searched rooms: rare terms weigh more
//! than common ones, repeats count with diminishing returns, short texts beat long ones,
//! and a whole-word match counts more than a prefix match. The collection size BM25 needs
//! is estimated by the number of events holding any of the terms.

use std::collections::HashMap;

use super::index::{split_key, term_prefix, Posting};
use crate::services::error::{ServiceError, ServiceResult};
use crate::storage::{Db, Table};

const K1: f64 = 1.2;
const B: f64 = 0.75;
/// Weight of a term matched only as the start of longer words.
const PREFIX_WEIGHT: f64 = 0.6;
/// Terms shorter than this match whole words only.
pub const MIN_PREFIX_CHARS: usize = 3;

/// An event holding every term.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The room's short id.
    pub room: u64,
    /// The event's stream position.
    pub pos: u64,
    /// The event's short id.
    pub short: u64,
    /// Higher is closer.
    pub rank: f64,
}

/// How one term occurs in one event.
#[derive(Debug, Clone, Copy)]
struct Hit {
    short: u64,
    count: u32,
    length: u16,
    exact: bool,
}

/// Matches of the terms in one room, before ranking.
#[derive(Debug, Default)]
pub struct RoomMatches {
    room: u64,
    /// Per term: position -> hit.
    per_term: Vec<HashMap<u64, Hit>>,
}

/// Reads the postings of every term in `room`, keeping those of the fields in `fields`
/// (a mask of [`super::index::Field`]).
pub fn room_matches(
    db: &Db,
    room: u64,
    terms: &[String],
    fields: u8,
) -> ServiceResult<RoomMatches> {
    let mut per_term = Vec::with_capacity(terms.len());
    for term in terms {
        let mut prefix = term_prefix(room, term);
        if term.chars().count() < MIN_PREFIX_CHARS {
            prefix.push(crate::storage::keys::SEP);
        }
        let mut hits: HashMap<u64, Hit> = HashMap::new();
        for entry in db.scan_prefix(Table::ShortroomidTermPosPosting, &prefix) {
            let (key, value) = entry?;
            let (word, pos) = split_key(&key[8..]).ok_or_else(corrupt)?;
            let posting = Posting::decode(&value).ok_or_else(corrupt)?;
            if posting.field & fields == 0 {
                continue;
            }
            let exact = word.len() == term.len();
            let hit = hits.entry(pos).or_insert(Hit {
                short: posting.short,
                count: 0,
                length: posting.length,
                exact: false,
            });
            hit.count += u32::from(posting.count);
            hit.exact |= exact;
        }
        if hits.is_empty() {
            // One term absent: nothing in this room holds them all.
            return Ok(RoomMatches {
                room,
                per_term: Vec::new(),
            });
        }
        per_term.push(hits);
    }
    Ok(RoomMatches { room, per_term })
}

fn corrupt() -> ServiceError {
    ServiceError::internal("corrupt search index entry")
}

/// Ranks the events holding every term, across rooms.
pub fn rank(matches: &[RoomMatches], terms: usize) -> Vec<Candidate> {
    let searched: Vec<&RoomMatches> = matches
        .iter()
        .filter(|m| m.per_term.len() == terms && terms > 0)
        .collect();
    // Document frequency of each term, and the estimated collection.
    let mut df = vec![0usize; terms];
    let mut any = 0usize;
    let mut total_length = 0u64;
    for m in &searched {
        let mut union: HashMap<u64, u16> = HashMap::new();
        for (t, hits) in m.per_term.iter().enumerate() {
            df[t] += hits.len();
            for (pos, hit) in hits {
                union.insert(*pos, hit.length);
            }
        }
        any += union.len();
        total_length += union.values().map(|l| u64::from(*l)).sum::<u64>();
    }
    let average_length = if any == 0 {
        1.0
    } else {
        (total_length as f64 / any as f64).max(1.0)
    };
    let idf: Vec<f64> = df
        .iter()
        .map(|&d| (1.0 + (any as f64 - d as f64 + 0.5) / (d as f64 + 0.5)).ln())
        .collect();

    let mut out = Vec::new();
    for m in searched {
        let Some((first, rest)) = m.per_term.split_first() else {
            continue;
        };
        'events: for (pos, hit) in first {
            let mut score = term_score(hit, idf[0], average_length);
            for (t, hits) in rest.iter().enumerate() {
                let Some(other) = hits.get(pos) else {
                    continue 'events;
                };
                score += term_score(other, idf[t + 1], average_length);
            }
            out.push(Candidate {
                room: m.room,
                pos: *pos,
                short: hit.short,
                rank: score,
            });
        }
    }
    out
}

fn term_score(hit: &Hit, idf: f64, average_length: f64) -> f64 {
    let tf = f64::from(hit.count);
    let norm = 1.0 - B + B * f64::from(hit.length.max(1)) / average_length;
    let weight = if hit.exact { 1.0 } else { PREFIX_WEIGHT };
    weight * idf * tf * (K1 + 1.0) / (tf + K1 * norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(short: u64, count: u32, length: u16, exact: bool) -> Hit {
        Hit {
            short,
            count,
            length,
            exact,
        }
    }

    fn matches(room: u64, per_term: Vec<Vec<(u64, Hit)>>) -> RoomMatches {
        RoomMatches {
            room,
            per_term: per_term
                .into_iter()
                .map(|hits| hits.into_iter().collect())
                .collect(),
        }
    }

    #[test]
    fn every_term_must_match_and_closer_matches_rank_higher() {
        let room = matches(
            1,
            vec![
                // "lunch": in events 10 (short text), 11 (long text), 12 (prefix only).
                vec![
                    (10, hit(100, 1, 3, true)),
                    (11, hit(101, 1, 40, true)),
                    (12, hit(102, 1, 3, false)),
                    (13, hit(103, 1, 3, true)),
                ],
                // "friday": in 10, 11, 12, not 13.
                vec![
                    (10, hit(100, 1, 3, true)),
                    (11, hit(101, 1, 40, true)),
                    (12, hit(102, 1, 3, true)),
                ],
            ],
        );
        let mut ranked = rank(&[room], 2);
        ranked.sort_by(|a, b| b.rank.total_cmp(&a.rank));
        let order: Vec<u64> = ranked.iter().map(|c| c.pos).collect();
        assert_eq!(order, vec![10, 12, 11]);
        assert!(ranked.iter().all(|c| c.rank > 0.0 && c.room == 1));
    }

    #[test]
    fn a_room_missing_a_term_contributes_nothing() {
        let partial = RoomMatches {
            room: 2,
            per_term: Vec::new(),
        };
        let full = matches(3, vec![vec![(5, hit(50, 2, 4, true))]]);
        let ranked = rank(&[partial, full], 1);
        assert_eq!(ranked.len(), 1);
        assert_eq!((ranked[0].room, ranked[0].short), (3, 50));
        assert!(rank(&[], 0).is_empty());
    }
}
