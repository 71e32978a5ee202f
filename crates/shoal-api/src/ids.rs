//! Object ids: 25 characters of lower-case base 36, like SwarmKit's, made from 128 random bits
//! the caller supplies (this crate has no randomness of its own).

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Length of every id this module makes.
pub const ID_LEN: usize = 25;

/// Formats 128 random bits as a 25-character base-36 id (36^25 > 2^128, so no bits are lost).
pub fn id_from_bits(mut bits: u128) -> String {
    let mut out = [b'0'; ID_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(bits % 36) as usize];
        bits /= 36;
    }
    out.iter().map(|&b| b as char).collect()
}

/// Whether `s` has the shape of an id made by [`id_from_bits`].
pub fn is_id(s: &str) -> bool {
    s.len() == ID_LEN && s.bytes().all(|b| ALPHABET.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_fixed_length_and_alphabet() {
        for bits in [0u128, 1, 35, 36, u128::MAX, 0x1234_5678_9abc_def0] {
            let id = id_from_bits(bits);
            assert!(is_id(&id), "{id}");
        }
        assert_eq!(id_from_bits(0), "0".repeat(ID_LEN));
        assert_ne!(id_from_bits(1), id_from_bits(2));
    }

    #[test]
    fn is_id_rejects_other_shapes() {
        assert!(!is_id("web"));
        assert!(!is_id(&"A".repeat(ID_LEN)));
    }
}
