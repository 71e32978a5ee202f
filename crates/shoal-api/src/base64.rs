//! Standard base64 (RFC 4648, with padding): Raft payloads in JSON, registry credentials.
//!
//! Pure; no I/O.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const INVALID: u8 = 0xff;

const DECODE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Standard base64 (RFC 4648, with padding).
// Plain index loops: this runs over every command payload, also in unoptimized test builds.
pub fn encode(input: &[u8]) -> String {
    let full = input.len() / 3;
    let rest = input.len() - full * 3;
    let mut out = vec![b'='; input.len().div_ceil(3) * 4];
    for i in 0..full {
        let n = (u32::from(input[3 * i]) << 16) | (u32::from(input[3 * i + 1]) << 8) | u32::from(input[3 * i + 2]);
        out[4 * i] = ALPHABET[(n >> 18) as usize & 63];
        out[4 * i + 1] = ALPHABET[(n >> 12) as usize & 63];
        out[4 * i + 2] = ALPHABET[(n >> 6) as usize & 63];
        out[4 * i + 3] = ALPHABET[n as usize & 63];
    }
    if rest > 0 {
        let b1 = if rest == 2 { input[3 * full + 1] } else { 0 };
        let n = (u32::from(input[3 * full]) << 16) | (u32::from(b1) << 8);
        out[4 * full] = ALPHABET[(n >> 18) as usize & 63];
        out[4 * full + 1] = ALPHABET[(n >> 12) as usize & 63];
        if rest == 2 {
            out[4 * full + 2] = ALPHABET[(n >> 6) as usize & 63];
        }
    }
    // Only alphabet characters and '=' were written.
    String::from_utf8(out).unwrap_or_default()
}

/// Why base64 text was rejected.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid base64: {0}")]
pub struct Base64Error(&'static str);

/// Decodes standard, padded base64.
pub fn decode(input: &[u8]) -> Result<Vec<u8>, Base64Error> {
    if !input.chunks_exact(4).remainder().is_empty() {
        return Err(Base64Error("length is not a multiple of 4"));
    }
    let pad = if input.ends_with(b"==") { 2 } else { usize::from(input.ends_with(b"=")) };
    let body = &input[..input.len() - pad];
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let mut n = 0u32;
    let mut bits = 0;
    for &c in body {
        let v = DECODE[c as usize];
        if v == INVALID {
            return Err(Base64Error("character outside the alphabet or misplaced padding"));
        }
        n = (n << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((n >> bits) as u8);
            n &= (1 << bits) - 1;
        }
    }
    if n != 0 {
        return Err(Base64Error("non-zero bits after the last byte"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc_4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(encode(plain.as_bytes()), encoded);
            assert_eq!(decode(encoded.as_bytes()).as_deref(), Ok(plain.as_bytes()));
        }
    }

    #[test]
    fn roundtrips_every_byte_at_every_length() {
        let all: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        for len in 0..all.len() {
            let data = &all[..len];
            assert_eq!(decode(encode(data).as_bytes()).as_deref(), Ok(data), "length {len}");
        }
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in ["Zg=", "Zg=a", "Z===", "Zm9v!A==", "Zg==Zg==", "Zm9vYmFy=", "Zh=="] {
            assert!(decode(bad.as_bytes()).is_err(), "{bad:?} must be rejected");
        }
    }
}
