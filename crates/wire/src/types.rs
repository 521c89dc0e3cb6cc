//! Value types that appear inside messages: instrument symbols, fixed-point prices and
//! quantities, order sides and the MoldUDP64 session name. Fixed point keeps the wire
//! exact (no float rounding between exchange, trader and database).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Result, WireError};

/// Fixed-point scale shared by prices and quantities: 1e-8, enough for crypto.
pub const SCALE: i64 = 100_000_000;

/// An instrument name, ASCII, at most 8 bytes, space padded on the wire (as ITCH).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Symbol([u8; 8]);

impl Symbol {
    pub const LEN: usize = 8;

    /// Builds a symbol from text: 1–8 printable ASCII characters, no spaces.
    pub fn new(name: &str) -> Result<Self> {
        let bytes = name.as_bytes();
        if bytes.is_empty()
            || bytes.len() > Self::LEN
            || !bytes.iter().all(|b| b.is_ascii_graphic())
        {
            return Err(WireError::BadSymbol);
        }
        let mut raw = [b' '; 8];
        raw[..bytes.len()].copy_from_slice(bytes);
        Ok(Self(raw))
    }

    /// Accepts the padded wire form: 1–8 printable characters, then spaces only.
    /// Rejects anything else, so every accepted symbol has one text form.
    pub fn from_wire(raw: [u8; 8]) -> Result<Self> {
        let len = raw.iter().position(|b| *b == b' ').unwrap_or(Self::LEN);
        let (name, padding) = raw.split_at(len);
        if name.is_empty()
            || !name.iter().all(u8::is_ascii_graphic)
            || !padding.iter().all(|b| *b == b' ')
        {
            return Err(WireError::BadSymbol);
        }
        Ok(Self(raw))
    }

    pub fn to_wire(self) -> [u8; 8] {
        self.0
    }

    pub fn as_str(&self) -> &str {
        let end = self.0.iter().position(|b| *b == b' ').unwrap_or(Self::LEN);
        // The constructors admit ASCII only, so this cannot fail; fall back to "" anyway.
        std::str::from_utf8(&self.0[..end]).unwrap_or("")
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Symbol({})", self.as_str())
    }
}

impl Serialize for Symbol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Symbol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Symbol::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A price in units of 1e-8 (so 1.08345 EUR/USD is 108_345_000).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Price(pub i64);

impl Price {
    pub fn from_f64(value: f64) -> Self {
        Self((value * SCALE as f64).round() as i64)
    }
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / SCALE as f64
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_fixed(self.0 as i128, f)
    }
}

/// A quantity in units of 1e-8 (so 0.5 BTC is 50_000_000).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Quantity(pub u64);

impl Quantity {
    pub fn from_f64(value: f64) -> Self {
        Self((value * SCALE as f64).round().max(0.0) as u64)
    }
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / SCALE as f64
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_fixed(self.0 as i128, f)
    }
}

/// Parses a decimal such as "1.08345" or "-2" into units of 1e-8, exactly; more than
/// eight decimals, or a value out of range, is an error rather than a rounding.
pub fn parse_fixed(text: &str) -> Option<i128> {
    let text = text.trim();
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty()
        || frac.len() > 8
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let int: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac_units: i128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<8}").parse().ok()?
    };
    let value = int.checked_mul(SCALE as i128)?.checked_add(frac_units)?;
    Some(if neg { -value } else { value })
}

/// JSON carries prices and quantities as decimal strings (exact), and accepts plain
/// numbers on input for convenience.
macro_rules! fixed_point_serde {
    ($ty:ident, $inner:ty) => {
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Repr {
                    Text(String),
                    Number(f64),
                }
                let text = match Repr::deserialize(d)? {
                    Repr::Text(t) => t,
                    Repr::Number(n) => format!("{n:.8}"),
                };
                parse_fixed(&text)
                    .and_then(|v| <$inner>::try_from(v).ok())
                    .map($ty)
                    .ok_or_else(|| {
                        serde::de::Error::custom(format!(
                            "invalid {}: {text:?} (want a decimal with at most 8 places)",
                            stringify!($ty).to_lowercase()
                        ))
                    })
            }
        }
    };
}

fixed_point_serde!(Price, i64);
fixed_point_serde!(Quantity, u64);

fn fmt_fixed(raw: i128, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let scale = SCALE as i128;
    let sign = if raw < 0 { "-" } else { "" };
    let abs = raw.abs();
    let frac = format!("{:08}", abs % scale);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        write!(f, "{sign}{}", abs / scale)
    } else {
        write!(f, "{sign}{}.{frac}", abs / scale)
    }
}

/// Aggressor side of a trade, or direction of an order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub fn to_wire(self) -> u8 {
        match self {
            Side::Buy => b'B',
            Side::Sell => b'S',
        }
    }
    pub fn from_wire(byte: u8) -> Result<Self> {
        match byte {
            b'B' => Ok(Side::Buy),
            b'S' => Ok(Side::Sell),
            other => Err(WireError::BadSide(other)),
        }
    }
    pub fn opposite(self) -> Self {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }
}

/// MoldUDP64 session name: 10 bytes, identifies one run of the exchange's feed so a
/// receiver never mixes sequence numbers of two runs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Session(pub [u8; 10]);

impl Session {
    pub const LEN: usize = 10;

    /// Space-pads (or truncates) a name to 10 bytes; non-ASCII bytes become '?'.
    pub fn from_name(name: &str) -> Self {
        let mut raw = [b' '; 10];
        for (slot, b) in raw.iter_mut().zip(name.bytes()) {
            *slot = if b.is_ascii_graphic() { b } else { b'?' };
        }
        Self(raw)
    }

    pub fn as_str(&self) -> String {
        String::from_utf8_lossy(&self.0).trim_end().to_string()
    }
}

impl fmt::Display for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Session({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbol_round_trips_and_rejects_bad_names() {
        let s = Symbol::new("EURUSD").unwrap();
        assert_eq!(s.as_str(), "EURUSD");
        assert_eq!(&s.to_wire(), b"EURUSD  ");
        assert_eq!(Symbol::from_wire(s.to_wire()).unwrap(), s);
        assert!(Symbol::new("").is_err());
        assert!(Symbol::new("TOOLONGSYM").is_err());
        assert!(Symbol::new("EUR USD").is_err());
        assert!(Symbol::from_wire([0; 8]).is_err());
        assert!(Symbol::from_wire(*b"        ").is_err());
        assert!(Symbol::from_wire(*b"AB CD   ").is_err());
        assert!(Symbol::from_wire(*b"ABCDEFGH").is_ok());
    }

    #[test]
    fn fixed_point_formats_exactly() {
        assert_eq!(Price(108_345_000).to_string(), "1.08345");
        assert_eq!(Price(-150_000_000).to_string(), "-1.5");
        assert_eq!(Price(6_000_000_000_000).to_string(), "60000");
        assert_eq!(Quantity(1).to_string(), "0.00000001");
        assert_eq!(Price::from_f64(1.08345), Price(108_345_000));
        assert_eq!(parse_fixed("1.08345"), Some(108_345_000));
        assert_eq!(parse_fixed("-2"), Some(-200_000_000));
        assert_eq!(parse_fixed(".5"), Some(50_000_000));
        assert_eq!(parse_fixed("1.123456789"), None);
        assert_eq!(parse_fixed("abc"), None);
        assert_eq!(parse_fixed(""), None);
        let q: Quantity = serde_json::from_str("\"0.25\"").unwrap();
        assert_eq!(q, Quantity(25_000_000));
        let q: Quantity = serde_json::from_str("2").unwrap();
        assert_eq!(q, Quantity(200_000_000));
        assert!(serde_json::from_str::<Quantity>("\"-1\"").is_err());
        assert_eq!(
            serde_json::to_string(&Price(108_345_000)).unwrap(),
            "\"1.08345\""
        );
    }

    #[test]
    fn session_pads_and_trims() {
        let s = Session::from_name("quick");
        assert_eq!(&s.0, b"quick     ");
        assert_eq!(s.as_str(), "quick");
        assert_eq!(
            Session::from_name("averyveryverylongname").as_str(),
            "averyveryv"
        );
    }
}
