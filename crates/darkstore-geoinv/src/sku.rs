//! SKUs, interned: the text of each SKU is kept once for the whole process, and a [`Sku`] is a
//! thin pointer to it (8 bytes), so a city's million stock lines do not each carry a copy.
//!
//! Interned text is never freed: only SKUs that exist (in the catalog, or in stored ledger rows)
//! may be interned, never text from a request that is still to be checked. Looking a line up by
//! text ([`crate::stock::StoreStock::line`]) interns nothing.

use std::cmp::Ordering;
use std::fmt;
use std::ops::Deref;

use ustr::Ustr;

/// An interned SKU. Equality and hashing are the pointer's; order is the text's (byte-wise, as
/// `str`'s), so lines sort by SKU as before.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sku(Ustr);

impl Sku {
    /// The SKU with this text, interned on first use (see the module's note on what may be).
    pub fn new(text: &str) -> Sku {
        Sku(Ustr::from(text))
    }

    pub fn as_str(&self) -> &'static str {
        self.0.as_str()
    }
}

impl Deref for Sku {
    type Target = str;
    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl Ord for Sku {
    fn cmp(&self, other: &Sku) -> Ordering {
        if self.0 == other.0 { Ordering::Equal } else { self.as_str().cmp(other.as_str()) }
    }
}

impl PartialOrd for Sku {
    fn partial_cmp(&self, other: &Sku) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Sku;

    #[test]
    fn interned_skus_compare_as_their_text() {
        let (a, b, a2) = (Sku::new("milk-1l"), Sku::new("bread"), Sku::new("milk-1l"));
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert!(b < a);
        assert_eq!(&*a, "milk-1l");
        assert_eq!(std::mem::size_of::<Sku>(), 8);
        let mut v = [Sku::new("c"), Sku::new("a"), Sku::new("b-2"), Sku::new("b")];
        v.sort();
        assert_eq!(v.iter().map(|s| s.as_str()).collect::<Vec<_>>(), ["a", "b", "b-2", "c"]);
    }
}
