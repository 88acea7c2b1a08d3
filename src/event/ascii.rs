//! Short ASCII texts formatted on the stack: the fixed-size buffers that
//! LSNs, event ids and timestamps are written into, so the hot path of
//! [`ChangeEvent::to_json`](super::ChangeEvent::to_json) never allocates for
//! them.
//!
//! It does not know what the texts mean (that is `id` and `time`) and does
//! not escape anything: everything written here is plain ASCII.

/// A short ASCII text formatted on the stack (ids, LSNs, timestamps).
#[derive(Clone, Copy)]
pub(super) struct Ascii<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Default for Ascii<N> {
    fn default() -> Self {
        Ascii {
            bytes: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> From<[u8; 16]> for Ascii<N> {
    fn from(digits: [u8; 16]) -> Self {
        let mut text = Ascii::default();
        text.push(&digits);
        text
    }
}

impl<const N: usize> Ascii<N> {
    /// Panics past `N` bytes: every caller's longest text is its `N`.
    pub(super) fn push(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// `value` in decimal, zero-padded to `width` digits (`value` has no more).
    pub(super) fn push_digits(&mut self, mut value: u32, width: usize) {
        let digits = &mut self.bytes[self.len..self.len + width];
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
        self.len += width;
    }

    /// `value` in upper-case hex without leading zeros, as `{:X}` writes it.
    pub(super) fn push_hex(&mut self, value: u32) {
        let width = (8 - value.leading_zeros() as usize / 4).max(1);
        let digits = &mut self.bytes[self.len..self.len + width];
        for (i, digit) in digits.iter_mut().rev().enumerate() {
            *digit = HEX_DIGITS[(value >> (4 * i)) as usize & 0xF];
        }
        self.len += width;
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    pub(super) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("formatted as ASCII")
    }
}

const HEX_DIGITS: &[u8; 16] = b"0123456789ABCDEF";

/// `value` as exactly 16 upper-case hex digits.
pub(super) fn hex16(value: u64) -> [u8; 16] {
    let mut out = [0; 16];
    for (i, digit) in out.iter_mut().enumerate() {
        *digit = HEX_DIGITS[(value >> (60 - 4 * i)) as usize & 0xF];
    }
    out
}
