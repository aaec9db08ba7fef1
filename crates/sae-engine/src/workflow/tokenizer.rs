//! Token display from a Hugging Face `tokenizer.json`.
//!
//! We read the vocabulary ourselves instead of linking the `tokenizers` crate: top
//! examples only need id -> piece for display, and `tokenizers` brings a regex engine,
//! normalizers and pre-tokenizers (dozens of crates) for encoding we never do. Pieces
//! are mapped back to text for the two common conventions: byte-level BPE (GPT-2,
//! Llama 3, Qwen: `Ġ` = space, bytes remapped to printable code points) and
//! SentencePiece (`▁` = space, `<0x0A>` byte tokens).

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

/// id -> displayable text.
#[derive(Debug, Clone, Default)]
pub struct Vocab {
    pieces: HashMap<i64, String>,
    byte_level: bool,
    byte_decoder: HashMap<char, u8>,
}

/// GPT-2's bytes_to_unicode, inverted: printable bytes map to themselves, the others
/// to 256 + n in order.
fn byte_decoder() -> HashMap<char, u8> {
    let mut printable: Vec<u8> = (b'!'..=b'~').collect();
    printable.extend(0xA1u8..=0xAC);
    printable.extend(0xAEu8..=0xFF);
    let mut map = HashMap::new();
    let mut n = 0u32;
    for b in 0u16..=255 {
        let b = b as u8;
        let c = if printable.contains(&b) {
            char::from_u32(b as u32)
        } else {
            n += 1;
            char::from_u32(255 + n)
        };
        if let Some(c) = c {
            map.insert(c, b);
        }
    }
    map
}

impl Vocab {
    /// Loads `model.vocab` (BPE/WordPiece map, or Unigram list) and `added_tokens`.
    pub fn from_tokenizer_json(path: &Path) -> Result<Vocab> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
        let model = json
            .get("model")
            .ok_or_else(|| Error::missing(path, "`model` (a Hugging Face tokenizer.json)"))?;
        let mut pieces = HashMap::new();
        match model.get("vocab") {
            Some(serde_json::Value::Object(m)) => {
                for (piece, id) in m {
                    if let Some(id) = id.as_i64() {
                        pieces.insert(id, piece.clone());
                    }
                }
            }
            Some(serde_json::Value::Array(a)) => {
                for (id, entry) in a.iter().enumerate() {
                    if let Some(p) = entry.get(0).and_then(|p| p.as_str()) {
                        pieces.insert(id as i64, p.to_string());
                    }
                }
            }
            _ => return Err(Error::missing(path, "`model.vocab`")),
        }
        if let Some(added) = json.get("added_tokens").and_then(|a| a.as_array()) {
            for t in added {
                if let (Some(id), Some(c)) = (
                    t.get("id").and_then(|v| v.as_i64()),
                    t.get("content").and_then(|v| v.as_str()),
                ) {
                    pieces.insert(id, c.to_string());
                }
            }
        }
        let byte_level = text.contains("\"ByteLevel\"");
        Ok(Vocab {
            pieces,
            byte_level,
            byte_decoder: if byte_level {
                byte_decoder()
            } else {
                HashMap::new()
            },
        })
    }

    /// Number of known ids.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// Whether the vocabulary is empty.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The raw piece of `id`, if known.
    pub fn piece(&self, id: i64) -> Option<&str> {
        self.pieces.get(&id).map(|s| s.as_str())
    }

    /// The text of a sequence of ids (unknown ids as `<id>`).
    pub fn decode(&self, ids: &[i64]) -> String {
        let mut bytes: Vec<u8> = Vec::new();
        for id in ids {
            let Some(p) = self.pieces.get(id) else {
                bytes.extend(format!("<{id}>").as_bytes());
                continue;
            };
            if self.byte_level {
                for c in p.chars() {
                    match self.byte_decoder.get(&c) {
                        Some(b) => bytes.push(*b),
                        None => bytes.extend(c.to_string().as_bytes()),
                    }
                }
            } else if let Some(b) = p
                .strip_prefix("<0x")
                .and_then(|h| h.strip_suffix('>'))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                bytes.push(b);
            } else {
                bytes.extend(p.replace('\u{2581}', " ").as_bytes());
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_and_sentencepiece() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        std::fs::write(
            &p,
            r#"{"model":{"type":"BPE","vocab":{"Hello":0,"\u0120world":1,"\u010a":2}},
                "pre_tokenizer":{"type":"ByteLevel"},
                "added_tokens":[{"id":3,"content":"<|end|>"}]}"#,
        )
        .unwrap();
        let v = Vocab::from_tokenizer_json(&p).unwrap();
        assert_eq!(v.decode(&[0, 1, 2, 3, 9]), "Hello world\n<|end|><9>");
        std::fs::write(
            &p,
            r#"{"model":{"type":"Unigram","vocab":[["\u2581the",0.0],["<0x0A>",0.0]]}}"#,
        )
        .unwrap();
        let v = Vocab::from_tokenizer_json(&p).unwrap();
        assert_eq!(v.decode(&[0, 1]), " the\n");
        std::fs::write(&p, "{}").unwrap();
        assert!(Vocab::from_tokenizer_json(&p).is_err());
    }
}
