//! Counted nouns in messages and reports: "1 shard file", "3 shard files".

/// `n` followed by `noun`, with an `s` added unless `n` is 1.
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_is_singular_everything_else_plural() {
        assert_eq!(count(1, "shard file"), "1 shard file");
        assert_eq!(count(0, "shard file"), "0 shard files");
        assert_eq!(count(2, "fine-tune"), "2 fine-tunes");
    }
}
