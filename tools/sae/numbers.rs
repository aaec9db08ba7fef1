//! Numeric flag values. Every count and id flag accepts a negative-looking value as a
//! value (`--top -1`), so the user hears what range is allowed instead of clap's
//! "unexpected argument '-1'".

/// A whole number >= `MIN` (and within u64).
pub fn at_least<const MIN: u64>(s: &str) -> std::result::Result<u64, String> {
    let bound = if MIN == 0 {
        "a whole number >= 0".to_string()
    } else {
        format!("a whole number >= {MIN}")
    };
    match s.trim().parse::<i128>() {
        Ok(v) if v >= MIN as i128 && v <= u64::MAX as i128 => Ok(v as u64),
        Ok(_) => Err(format!("`{s}` is out of range: expected {bound}")),
        Err(_) => Err(format!("`{s}`: expected {bound}")),
    }
}

/// [`at_least`] as a `usize` (counts, latent ids).
pub fn count(s: &str) -> std::result::Result<usize, String> {
    at_least::<0>(s)?
        .try_into()
        .map_err(|_| format!("`{s}` is too large"))
}

/// [`at_least::<1>`] as a `usize`.
pub fn positive(s: &str) -> std::result::Result<usize, String> {
    at_least::<1>(s)?
        .try_into()
        .map_err(|_| format!("`{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_and_junk_get_the_range() {
        assert_eq!(count("3"), Ok(3));
        assert_eq!(
            count("-1").unwrap_err(),
            "`-1` is out of range: expected a whole number >= 0"
        );
        assert_eq!(
            positive("0").unwrap_err(),
            "`0` is out of range: expected a whole number >= 1"
        );
        assert_eq!(count("x").unwrap_err(), "`x`: expected a whole number >= 0");
    }
}
