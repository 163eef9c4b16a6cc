//! Exact non-negative decimal quantities (hours, GB), never floats. Same fixed point as money
//! (millionths), parsed and written by the same code ([`catalog::parse_millionths`]).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A non-negative decimal with at most six fractional digits, held exactly as millionths.
///
/// Used for quantities a person types: `9.5` hours, `100` GB, `0.25` GB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Decimal(u64);

/// A string that is not a non-negative decimal with at most six decimals.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a non-negative decimal number (expected e.g. 9.5, at most 6 decimals)")]
pub struct ParseDecimalError(pub String);

impl Decimal {
    pub const ZERO: Decimal = Decimal(0);
    pub const SCALE: u64 = 1_000_000;

    /// The decimal `millionths / 1,000,000`.
    pub const fn from_millionths(millionths: u64) -> Decimal {
        Decimal(millionths)
    }

    pub const fn millionths(self) -> u64 {
        self.0
    }

    /// A whole number; `None` if it does not fit.
    pub const fn from_int(n: u64) -> Option<Decimal> {
        match n.checked_mul(Self::SCALE) {
            Some(m) => Some(Decimal(m)),
            None => None,
        }
    }

    /// The smallest whole number not below `self`.
    pub const fn ceil(self) -> u64 {
        self.0.div_ceil(Self::SCALE)
    }

    /// Parses `12`, `9.5`, `0.000001`.
    pub fn parse(s: &str) -> Result<Decimal, ParseDecimalError> {
        let err = || ParseDecimalError(s.to_string());
        // The shared fixed-point grammar, without a sign: quantities are never negative.
        if s.trim().starts_with('-') {
            return Err(err());
        }
        let millionths = catalog::parse_millionths(s).ok_or_else(err)?;
        u64::try_from(millionths).map(Decimal).map_err(|_| err())
    }
}

impl fmt::Display for Decimal {
    /// As few decimals as the value needs: `9.5`, `100`, `0.000001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        catalog::write_millionths(f, i128::from(self.0), 0)
    }
}

impl std::str::FromStr for Decimal {
    type Err = ParseDecimalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Decimal::parse(s)
    }
}

/// Written as a decimal string, so that no float ever carries it.
impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Decimal::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!(Decimal::parse("9.5").unwrap().millionths(), 9_500_000);
        assert_eq!(
            Decimal::parse("100").unwrap(),
            Decimal::from_int(100).unwrap()
        );
        assert_eq!(Decimal::parse(" 0.000001 ").unwrap().millionths(), 1);
        assert_eq!(Decimal::parse("9.5").unwrap().to_string(), "9.5");
        assert_eq!(Decimal::parse("100.000").unwrap().to_string(), "100");
        for bad in [
            "",
            "-1",
            ".5",
            "1.",
            "1.2345678",
            "1e3",
            "abc",
            "1.2.3",
            "99999999999999999",
        ] {
            assert!(Decimal::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ceil_rounds_up_partial_units() {
        assert_eq!(Decimal::parse("9.5").unwrap().ceil(), 10);
        assert_eq!(Decimal::parse("10").unwrap().ceil(), 10);
        assert_eq!(Decimal::parse("0.000001").unwrap().ceil(), 1);
        assert_eq!(Decimal::ZERO.ceil(), 0);
    }

    proptest! {
        #[test]
        fn display_round_trips(m in 0u64..u64::MAX / 2) {
            let d = Decimal::from_millionths(m);
            prop_assert_eq!(Decimal::parse(&d.to_string()).unwrap(), d);
        }
    }
}
