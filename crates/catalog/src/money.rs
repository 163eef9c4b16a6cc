//! Exact money: whole micro-dollars in an `i64`, never a float.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::ops::{Add, AddAssign, Neg, Sub, SubAssign};

/// Parses the fixed-point grammar of every exact quantity here: `12`, `12.5`, `-0.000001`
/// (an optional minus, digits, at most six decimals), in millionths. `None` when the text is not
/// in it or does not fit an `i128`. In `i128`, so that the most negative `i64` amount (one
/// millionth more in magnitude than the most positive) reads back as it prints.
///
/// The one parser of the workspace's fixed-point numbers: [`Usd`], and `billing`'s quantities.
pub fn parse_millionths(s: &str) -> Option<i128> {
    let t = s.trim();
    let (neg, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(frac) || frac.len() > 6 {
        return None;
    }
    if digits.ends_with('.') {
        return None;
    }
    let whole: i128 = whole.parse().ok()?;
    let frac: i128 = format!("{frac:0<6}").parse().ok()?;
    let value = whole.checked_mul(1_000_000)?.checked_add(frac)?;
    Some(if neg { -value } else { value })
}

/// Writes `millionths` as a decimal with as few decimals as it needs, but at least
/// `min_decimals` (and no point at all for a whole number when that is 0): `12.50` (2), `9.5`,
/// `100` (0), `0.000001`. The one formatter of the workspace's fixed-point numbers.
pub fn write_millionths(
    f: &mut fmt::Formatter<'_>,
    millionths: i128,
    min_decimals: usize,
) -> fmt::Result {
    let sign = if millionths < 0 { "-" } else { "" };
    let abs = millionths.unsigned_abs();
    let whole = abs / 1_000_000;
    let frac = format!("{:06}", abs % 1_000_000);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() && min_decimals == 0 {
        write!(f, "{sign}{whole}")
    } else {
        write!(f, "{sign}{whole}.{frac:0<min_decimals$}")
    }
}

/// An amount of US dollars, counted in micro-dollars (1 USD = 1,000,000).
///
/// Signed, because a balance can go below zero. Written and read as a decimal string
/// ("0.87", "-12.5"), with at most six decimals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(i64);

/// A decimal string that is not an amount of dollars.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an amount in US dollars (expected a decimal like 12.34, at most 6 decimals)")]
pub struct ParseUsdError(pub String);

impl Usd {
    pub const ZERO: Usd = Usd(0);
    pub const MICROS_PER_USD: i64 = 1_000_000;

    pub const fn from_micros(micros: i64) -> Usd {
        Usd(micros)
    }

    pub const fn micros(self) -> i64 {
        self.0
    }

    /// The amount in whole cents, rounded half up (toward +infinity at exactly half a cent):
    /// what people see on a bill line or a balance.
    pub const fn round_cents(self) -> Usd {
        const CENT: i64 = 10_000;
        Usd(self.0.saturating_add(CENT / 2).div_euclid(CENT) * CENT)
    }

    /// Whether the amount is a whole number of cents.
    pub const fn is_whole_cents(self) -> bool {
        self.0 % 10_000 == 0
    }

    /// Parses "12", "12.5", "-0.000001".
    pub fn parse(s: &str) -> Result<Usd, ParseUsdError> {
        let micros = parse_millionths(s).ok_or_else(|| ParseUsdError(s.to_string()))?;
        i64::try_from(micros)
            .map(Usd)
            .map_err(|_| ParseUsdError(s.to_string()))
    }

    /// `self + o`, or `None` if the sum is out of range.
    pub fn checked_add(self, o: Usd) -> Option<Usd> {
        self.0.checked_add(o.0).map(Usd)
    }

    /// The amount as a float, for display and JSON numbers only; never compute with it.
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / Self::MICROS_PER_USD as f64
    }

    pub fn checked_mul(self, n: i64) -> Option<Usd> {
        self.0.checked_mul(n).map(Usd)
    }

    /// `self * num / den`, rounded half up (away from zero) to the micro-dollar.
    pub fn mul_ratio(self, num: i128, den: i128) -> Usd {
        assert!(den > 0, "mul_ratio: the denominator must be positive");
        let p = self.0 as i128 * num;
        let q = p.div_euclid(den);
        let r = p.rem_euclid(den);
        let rounded = if 2 * r >= den { q + 1 } else { q };
        // Out of range only for counts no real traffic reaches; saturate rather than fail a
        // daily close on every node.
        Usd(rounded.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64)
    }
}

impl fmt::Display for Usd {
    /// At least two decimals, more only where the amount needs them: 12.50, 0.000001.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_millionths(f, i128::from(self.0), 2)
    }
}

impl std::str::FromStr for Usd {
    type Err = ParseUsdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Usd::parse(s)
    }
}

impl Serialize for Usd {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Usd::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Add for Usd {
    type Output = Usd;
    fn add(self, o: Usd) -> Usd {
        Usd(self.0 + o.0)
    }
}

impl AddAssign for Usd {
    fn add_assign(&mut self, o: Usd) {
        self.0 += o.0;
    }
}

impl Sub for Usd {
    type Output = Usd;
    fn sub(self, o: Usd) -> Usd {
        Usd(self.0 - o.0)
    }
}

impl SubAssign for Usd {
    fn sub_assign(&mut self, o: Usd) {
        self.0 -= o.0;
    }
}

impl Neg for Usd {
    type Output = Usd;
    fn neg(self) -> Usd {
        Usd(-self.0)
    }
}

impl std::iter::Sum for Usd {
    fn sum<I: Iterator<Item = Usd>>(iter: I) -> Usd {
        iter.fold(Usd::ZERO, Add::add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cents_round_half_up() {
        let r = |s: &str| Usd::parse(s).unwrap().round_cents().to_string();
        assert_eq!(r("9.119995"), "9.12");
        assert_eq!(r("0.004999"), "0.00");
        assert_eq!(r("0.005"), "0.01");
        assert_eq!(r("-0.005"), "0.00");
        assert_eq!(r("-0.005001"), "-0.01");
        assert!(Usd::parse("1.23").unwrap().is_whole_cents());
        assert!(!Usd::parse("1.234").unwrap().is_whole_cents());
    }

    #[test]
    fn the_extremes_print_and_read_back() {
        for micros in [i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX] {
            let u = Usd::from_micros(micros);
            assert_eq!(Usd::parse(&u.to_string()), Ok(u), "{u}");
        }
        assert!(Usd::parse("9223372036854.775808").is_err());
        assert!(Usd::parse("-9223372036854.775809").is_err());
        assert_eq!(
            Usd::from_micros(i64::MAX).checked_add(Usd::from_micros(1)),
            None
        );
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(Usd::parse("0.87").unwrap().micros(), 870_000);
        assert_eq!(Usd::parse("5518.20").unwrap().micros(), 5_518_200_000);
        assert_eq!(Usd::parse("-0.000001").unwrap().micros(), -1);
        assert_eq!(Usd::from_micros(12_500_000).to_string(), "12.50");
        assert_eq!(Usd::from_micros(1).to_string(), "0.000001");
        assert_eq!(Usd::from_micros(-1_170_000).to_string(), "-1.17");
        for bad in ["", ".5", "1.", "1.2345678", "abc", "1e3", "--1"] {
            assert!(Usd::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mul_ratio_rounds_half_up() {
        assert_eq!(Usd::from_micros(1).mul_ratio(1, 2).micros(), 1);
        assert_eq!(Usd::from_micros(1).mul_ratio(1, 3).micros(), 0);
        assert_eq!(Usd::from_micros(-1).mul_ratio(1, 2).micros(), 0);
    }

    proptest! {
        #[test]
        fn display_round_trips(m in -1_000_000_000_000i64..1_000_000_000_000) {
            let u = Usd::from_micros(m);
            prop_assert_eq!(Usd::parse(&u.to_string()).unwrap(), u);
        }
    }
}
