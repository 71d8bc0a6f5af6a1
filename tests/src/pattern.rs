//! The deterministic byte stream that the L7 backend (`src/bin/l7backend.rs`, `GET /bytes/N`)
//! serves and that the tests upload (`POST /sha256`): byte `p` of the stream depends only on
//! `p`, so a producer and a checker that cut it into different chunks still agree, and neither
//! ever holds the whole stream in memory.
//!
//! The stream is 64 KiB blocks of one pseudo-random base block, each block's first 8 bytes
//! mixed with its index: a dropped, repeated or reordered block changes the digest, and
//! producing a block costs a copy, not a generator step per byte (fast in a debug build too).

use std::sync::OnceLock;

use ring::digest::{Context, SHA256};

/// The length of one block of the stream.
pub const BLOCK: usize = 64 * 1024;

fn base() -> &'static [u8] {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        (0..BLOCK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    })
}

/// The first 8 bytes of block `b`.
fn block_head(b: u64) -> [u8; 8] {
    let mut head = b
        .wrapping_add(1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .to_le_bytes();
    for (h, x) in head.iter_mut().zip(base()) {
        *h ^= x;
    }
    head
}

/// Fills `buf` with the stream's bytes from position `offset` on.
pub fn fill(offset: u64, buf: &mut [u8]) {
    let base = base();
    let mut pos = offset;
    let mut done = 0;
    while done < buf.len() {
        let block = pos / BLOCK as u64;
        let within = (pos % BLOCK as u64) as usize;
        let n = (BLOCK - within).min(buf.len() - done);
        let out = &mut buf[done..done + n];
        out.copy_from_slice(&base[within..within + n]);
        if within < 8 {
            let head = block_head(block);
            let k = (8 - within).min(n);
            out[..k].copy_from_slice(&head[within..within + k]);
        }
        done += n;
        pos += n as u64;
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A running SHA-256 (ring), finished as lowercase hex.
pub struct Sha256 {
    ctx: Context,
    len: u64,
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256::new()
    }
}

impl Sha256 {
    pub fn new() -> Sha256 {
        Sha256 {
            ctx: Context::new(&SHA256),
            len: 0,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
        self.len += data.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn finish_hex(self) -> String {
        hex(self.ctx.finish().as_ref())
    }
}

/// The SHA-256 (hex) of the first `len` bytes of the stream.
pub fn sha256_hex(len: u64) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 * BLOCK];
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(buf.len() as u64) as usize;
        fill(pos, &mut buf[..n]);
        h.update(&buf[..n]);
        pos += n as u64;
    }
    h.finish_hex()
}

/// Writes the first `len` bytes of the stream to `w` in 256 KiB writes.
pub fn write_to(mut w: impl std::io::Write, len: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4 * BLOCK];
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(buf.len() as u64) as usize;
        fill(pos, &mut buf[..n]);
        w.write_all(&buf[..n])?;
        pos += n as u64;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_chunking_gives_the_same_stream() {
        let len = 3 * BLOCK + 123;
        let mut whole = vec![0u8; len];
        fill(0, &mut whole);
        let mut pieces = Vec::new();
        let mut pos = 0usize;
        for step in [1usize, 7, 8, 9, 4096, BLOCK - 3, BLOCK + 5].iter().cycle() {
            if pos >= len {
                break;
            }
            let n = (*step).min(len - pos);
            let mut b = vec![0u8; n];
            fill(pos as u64, &mut b);
            pieces.extend_from_slice(&b);
            pos += n;
        }
        assert_eq!(whole, pieces);
        let mut h = Sha256::new();
        h.update(&whole);
        assert_eq!(h.finish_hex(), sha256_hex(len as u64));
    }

    #[test]
    fn blocks_differ() {
        let mut a = vec![0u8; BLOCK];
        let mut b = vec![0u8; BLOCK];
        fill(0, &mut a);
        fill(BLOCK as u64, &mut b);
        assert_ne!(a, b, "block 0 and block 1");
        assert_eq!(a[8..], b[8..], "only the heads differ");
        assert_eq!(
            sha256_hex(0),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
