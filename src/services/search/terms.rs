//! Index terms: text split into words, each word folded so that case and accents don't
//! matter ("Été", "ÉTÉ" and "ete" are one term).
//!
//! A word is a run of letters, digits and combining marks. Han ideographs and kana are
//! written without spaces, so each of them is a word of its own (a search for "東京" finds
//! events holding both characters). Folding is Unicode compatibility decomposition (NFKD),
//! combining marks dropped, lower case, and a few letters that don't decompose spelled out
//! (ß → ss, æ → ae, ø → o, ...).

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Longer terms are cut to this many bytes (on a character boundary); a search term is cut
/// the same way, so it still finds them.
pub const MAX_TERM_BYTES: usize = 64;

/// Characters that are a word by themselves: Han ideographs and the kana.
fn stands_alone(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF        // Hiragana, Katakana
        | 0x3400..=0x4DBF      // CJK Extension A
        | 0x4E00..=0x9FFF      // CJK Unified Ideographs
        | 0xF900..=0xFAFF      // CJK Compatibility Ideographs
        | 0x20000..=0x3134F) // CJK Extensions B to G
}

fn in_word(c: char) -> bool {
    c.is_alphanumeric() || is_combining_mark(c)
}

/// The words of `text`, as written, in order.
pub fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in text.char_indices() {
        if stands_alone(c) {
            if let Some(s) = start.take() {
                out.push(&text[s..i]);
            }
            out.push(&text[i..i + c.len_utf8()]);
        } else if in_word(c) {
            start.get_or_insert(i);
        } else if let Some(s) = start.take() {
            out.push(&text[s..i]);
        }
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out
}

/// Letters that compatibility decomposition leaves alone, as their plain spelling.
fn spelled_out(c: char) -> Option<&'static str> {
    Some(match c {
        'ß' | 'ẞ' => "ss",
        'æ' | 'Æ' => "ae",
        'œ' | 'Œ' => "oe",
        'ø' | 'Ø' => "o",
        'ł' | 'Ł' => "l",
        'đ' | 'Đ' | 'ð' | 'Ð' => "d",
        'þ' | 'Þ' => "th",
        'ı' => "i",
        _ => return None,
    })
}

/// One word folded: no case, no accents; cut to [`MAX_TERM_BYTES`].
pub fn fold(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.nfkd() {
        if is_combining_mark(c) {
            continue;
        }
        match spelled_out(c) {
            Some(s) => out.push_str(s),
            None => out.extend(c.to_lowercase()),
        }
    }
    if out.len() > MAX_TERM_BYTES {
        let mut end = MAX_TERM_BYTES;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

/// The folded terms of `text`, in order, repeats included.
pub fn terms(text: &str) -> Vec<String> {
    words(text)
        .into_iter()
        .map(fold)
        .filter(|t| !t.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_and_accents_fold_away() {
        assert_eq!(terms("Été ÉTÉ ete"), vec!["ete", "ete", "ete"]);
        assert_eq!(
            terms("Ça va? Crème brûlée!"),
            vec!["ca", "va", "creme", "brulee"]
        );
        assert_eq!(
            terms("Straße Œuvre Søren Łódź"),
            vec!["strasse", "oeuvre", "soren", "lodz"]
        );
        // A decomposed accent (e + U+0301) is the same word as the composed one.
        assert_eq!(terms("e\u{301}te\u{301}"), vec!["ete"]);
        // Compatibility forms: ligatures and full-width letters.
        assert_eq!(terms("ﬁne ＡＢＣ"), vec!["fine", "abc"]);
        assert_eq!(terms("ΚΑΛΗΜΈΡΑ"), vec!["καλημερα"]);
    }

    #[test]
    fn words_split_on_punctuation_and_ideographs_stand_alone() {
        assert_eq!(
            words("hello, world! it's 2026 — ok"),
            vec!["hello", "world", "it", "s", "2026", "ok"]
        );
        assert_eq!(words("東京に行く"), vec!["東", "京", "に", "行", "く"]);
        assert_eq!(words("abc東def"), vec!["abc", "東", "def"]);
        assert_eq!(words("  "), Vec::<&str>::new());
        assert_eq!(terms("Привет мир"), vec!["привет", "мир"]);
    }

    #[test]
    fn long_words_are_cut_on_a_character_boundary() {
        let long = "é".repeat(100);
        let folded = fold(&long);
        assert_eq!(folded.len(), MAX_TERM_BYTES);
        let wide = "ж".repeat(100);
        let folded = fold(&wide);
        assert!(folded.len() <= MAX_TERM_BYTES && folded.len() >= MAX_TERM_BYTES - 1);
        assert!(folded.chars().all(|c| c == 'ж'));
    }
}
