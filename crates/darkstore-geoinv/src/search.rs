//! Product search by name: case-insensitive, word prefixes, small typos, ranked.
//!
//! The index maps each lowercase word of every product name to the products that have it
//! (a `BTreeMap`, so the words that start with a prefix are one range). A query is split into
//! words; every query word must match some word of a product's name:
//! - the same word scores 3;
//! - a name word it is a prefix of scores 2 ("ban" finds "banana");
//! - a name word within Damerau-Levenshtein distance 1 (query words of 4 to 7 letters) or 2 (8 or
//!   more) scores 1 ("banan" is also a prefix; "bananna", "tomtao" are typos). Typos are looked for
//!   only among words with the same first letter, which keeps the scan to a small slice of the
//!   vocabulary and matches how people mistype.
//!
//! Products rank by their total score, then by shorter names (a closer match), then by SKU. The
//! distance is `strsim`'s (`damerau_levenshtein`). Pure: the caller filters what is in stock.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Most query words considered, and the longest query word.
pub const MAX_QUERY_WORDS: usize = 8;
const MAX_WORD: usize = 32;

/// A search index over product names.
#[derive(Debug, Default)]
pub struct SearchIndex {
    /// word → product ids (ascending, no duplicates)
    words: BTreeMap<String, Vec<u32>>,
    products: Vec<(Arc<str>, usize)>,
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(|w| w.to_lowercase())
}

impl SearchIndex {
    /// From (sku, name) pairs.
    pub fn build<'a>(products: impl IntoIterator<Item = (&'a Arc<str>, &'a str)>) -> SearchIndex {
        let mut index = SearchIndex::default();
        for (sku, name) in products {
            let id = index.products.len() as u32;
            index.products.push((sku.clone(), name.chars().count()));
            for w in words(name) {
                let ids = index.words.entry(w).or_default();
                if ids.last() != Some(&id) {
                    ids.push(id);
                }
            }
        }
        index
    }

    /// The products matching `query`, best first, as SKUs with their scores. An empty query
    /// matches nothing.
    pub fn query(&self, query: &str) -> Vec<(Arc<str>, u32)> {
        let terms: Vec<String> = words(query).filter(|w| w.chars().count() <= MAX_WORD).take(MAX_QUERY_WORDS).collect();
        if terms.is_empty() {
            return Vec::new();
        }
        // product id → (score so far, terms matched)
        let mut scores: std::collections::HashMap<u32, (u32, usize)> = std::collections::HashMap::new();
        for (t, term) in terms.iter().enumerate() {
            let mut best: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
            let mut hit = |ids: &Vec<u32>, s: u32| {
                for &id in ids {
                    let e = best.entry(id).or_insert(0);
                    *e = (*e).max(s);
                }
            };
            for (word, ids) in self.words.range(term.clone()..) {
                if !word.starts_with(term.as_str()) {
                    break;
                }
                hit(ids, if word == term { 3 } else { 2 });
            }
            let n = term.chars().count();
            let allowed = match n {
                0..=3 => 0,
                4..=7 => 1,
                _ => 2,
            };
            if allowed > 0 {
                let first: String = term.chars().take(1).collect();
                for (word, ids) in self.words.range(first.clone()..) {
                    if !word.starts_with(first.as_str()) {
                        break;
                    }
                    let m = word.chars().count();
                    if m.abs_diff(n) > allowed || word.starts_with(term.as_str()) {
                        continue;
                    }
                    if strsim::damerau_levenshtein(term, word) <= allowed {
                        hit(ids, 1);
                    }
                }
            }
            for (id, s) in best {
                let e = scores.entry(id).or_insert((0, 0));
                // Only products that matched every earlier term stay in the running.
                if e.1 == t {
                    *e = (e.0 + s, t + 1);
                }
            }
        }
        let mut out: Vec<(u32, u32)> =
            scores.into_iter().filter(|(_, (_, n))| *n == terms.len()).map(|(id, (s, _))| (id, s)).collect();
        out.sort_unstable_by(|a, b| {
            let (pa, pb) = (&self.products[a.0 as usize], &self.products[b.0 as usize]);
            b.1.cmp(&a.1).then(pa.1.cmp(&pb.1)).then_with(|| pa.0.cmp(&pb.0))
        });
        out.into_iter().map(|(id, s)| (self.products[id as usize].0.clone(), s)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> SearchIndex {
        let items = [
            ("banana", "Banana Robusta"),
            ("banana-chips", "Banana Chips, Salted"),
            ("tomato", "Tomato Hybrid"),
            ("ketchup", "Tomato Ketchup"),
            ("milk", "Toned Milk 1 l"),
            ("milk-2", "Full Cream Milk 500 ml"),
            ("bread", "Whole Wheat Bread"),
        ];
        let skus: Vec<(Arc<str>, &str)> = items.iter().map(|(s, n)| (Arc::from(*s), *n)).collect();
        SearchIndex::build(skus.iter().map(|(s, n)| (s, *n)))
    }

    fn skus(r: &[(Arc<str>, u32)]) -> Vec<&str> {
        r.iter().map(|(s, _)| &**s).collect()
    }

    #[test]
    fn finds_by_word_prefix_and_typo_ranked() {
        let ix = index();
        // (query, expected SKUs in order)
        let cases: &[(&str, &[&str])] = &[
            ("banana", &["banana", "banana-chips"]),
            ("BAN", &["banana", "banana-chips"]),
            ("bananna", &["banana", "banana-chips"]),
            ("tomtao", &["tomato", "ketchup"]),
            ("tomato ketchup", &["ketchup", "tomato"][..1]),
            ("milk", &["milk", "milk-2"]),
            ("cream milk", &["milk-2"]),
            ("whole wheet", &["bread"]),
            ("xyz", &[]),
            ("", &[]),
            ("  ,, ", &[]),
        ];
        for (q, want) in cases {
            assert_eq!(skus(&ix.query(q)), *want, "{q:?}");
        }
    }

    #[test]
    fn exact_words_outrank_prefixes_and_typos() {
        let ix = index();
        let r = ix.query("tomato");
        assert_eq!(r[0].1, 3);
        let r = ix.query("tom");
        assert!(r.iter().all(|(_, s)| *s == 2));
        // Short words get no typo allowance: "mlk" finds nothing.
        assert!(ix.query("mlk").is_empty());
    }
}
