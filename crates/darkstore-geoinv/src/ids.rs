//! Client-chosen ids (stores, SKUs, riders): 1–64 characters of `[A-Za-z0-9_.-]`.

/// The longest id accepted.
pub const MAX_ID_LEN: usize = 64;

/// True when `id` is a valid client-chosen id.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::valid_id;

    #[test]
    fn ids_table() {
        let long = "a".repeat(65);
        let max = "a".repeat(64);
        let cases = [
            ("milk-1l", true),
            ("A.b_c-9", true),
            (max.as_str(), true),
            ("", false),
            (long.as_str(), false),
            ("has space", false),
            ("slash/", false),
            ("ünïcode", false),
        ];
        for (id, ok) in cases {
            assert_eq!(valid_id(id), ok, "{id:?}");
        }
    }
}
