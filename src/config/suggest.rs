//! Did-you-mean: the closest known word to a misspelt one.

/// The candidate closest to `word`, if it is close enough to be a likely typo.
///
/// Case and `-`/`_` differences count as a match, since `Read-Policy` and
/// `read_policy` are the same intent. Otherwise the optimal string alignment
/// distance (edits plus swaps of neighbours, so `cahce` is one step from `cache`)
/// must be at most a third of the longer word (at least one), and smaller than
/// the longer word: a one-letter name like `c` is not "close" to `a`, but `bb`
/// is close to `b`.
pub fn closest<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let folded = fold(word);
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        if candidate == word {
            continue;
        }
        if fold(candidate) == folded {
            return Some(candidate);
        }
        let distance = edit_distance(&word.to_lowercase(), &candidate.to_lowercase());
        let longer = word.chars().count().max(candidate.chars().count());
        let close = distance <= (longer / 3).max(1) && distance < longer;
        let better = match best {
            Some((best_distance, _)) => distance < best_distance,
            None => true,
        };
        if close && better {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// ` (did you mean "x"?)`, or nothing.
pub fn did_you_mean<'a, I>(word: &str, candidates: I) -> String
where
    I: IntoIterator<Item = &'a str>,
{
    match closest(word, candidates) {
        Some(candidate) => format!(" (did you mean \"{candidate}\"?)"),
        None => String::new(),
    }
}

fn fold(word: &str) -> String {
    word.chars()
        .filter(|c| !matches!(c, '-' | '_' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

/// Optimal string alignment distance: insertions, deletions, substitutions and
/// swaps of two neighbouring characters each cost one.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // rows[i][j] is the distance between a[..i] and b[..j].
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [&str; 5] = ["size", "path", "create", "direct", "read_policy"];

    #[test]
    fn edit_distance_counts_swaps_as_one() {
        assert_eq!(edit_distance("cahce", "cache"), 1);
        assert_eq!(edit_distance("sise", "size"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn misspelt_key_suggests_the_known_one() {
        assert_eq!(closest("sise", KEYS), Some("size"));
        assert_eq!(closest("pth", KEYS), Some("path"));
        assert_eq!(closest("craete", KEYS), Some("create"));
    }

    #[test]
    fn case_and_separator_differences_match() {
        assert_eq!(closest("Read-Policy", KEYS), Some("read_policy"));
        assert_eq!(closest("readpolicy", KEYS), Some("read_policy"));
        assert_eq!(closest("SIZE", KEYS), Some("size"));
    }

    #[test]
    fn unrelated_words_get_no_suggestion() {
        assert_eq!(closest("colour", KEYS), None);
        assert_eq!(closest("c", ["a", "b"]), None);
        assert_eq!(closest("bb", ["a", "b"]), Some("b"));
        assert_eq!(closest("xyz", KEYS), None);
    }

    #[test]
    fn exact_word_is_not_suggested_to_itself() {
        assert_eq!(closest("size", ["size"]), None);
    }

    #[test]
    fn did_you_mean_formats_a_hint() {
        assert_eq!(did_you_mean("sise", KEYS), " (did you mean \"size\"?)");
        assert_eq!(did_you_mean("colour", KEYS), "");
    }
}
