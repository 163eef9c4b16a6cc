//! The backends of an API: one or more `http://HOST:PORT[/prefix]` URLs, each with a weight.
//!
//! An API's requests are spread over its backends in proportion to their weights (the data
//! plane's choice, see `decide`); this module holds the list, its checks and its text form.
//!
//! # Text form
//!
//! `URL[@WEIGHT]`, several separated by one space: `http://a:80@3 http://b:80`. A weight of 1
//! is left out. Spaces never occur in a valid backend URL, so the form is unambiguous; a URL
//! whose path ends in `@` and digits is written with its weight even when it is 1.
//!
//! The list is stored (sled snapshots, the Raft log) in this text form, in the place the single
//! `backend` URL had: one backend of weight 1 is stored exactly as before, so state written
//! before APIs had several backends reads back unchanged, in postcard and in JSON alike.

use crate::DomainError;
use crate::validate;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The most backends an API may have.
pub const MAX_BACKENDS: usize = 32;
/// The largest weight of a backend; the smallest is 1.
pub const MAX_WEIGHT: u32 = 1000;

/// One backend and its share of the API's requests.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WeightedBackend {
    /// `http://HOST:PORT[/prefix]`.
    pub url: String,
    /// 1 to [`MAX_WEIGHT`].
    pub weight: u32,
}

impl WeightedBackend {
    /// Parses `URL[@WEIGHT]` as the command line and declarative documents give it. The
    /// weight must be a number; whether it is in range, and the URL valid, is
    /// [`Backends::check`]'s to say (with the field named).
    pub fn parse(item: &str) -> Result<WeightedBackend, String> {
        let item = item.trim();
        match item.rsplit_once('@') {
            Some((url, weight))
                if !weight.is_empty() && weight.bytes().all(|b| b.is_ascii_digit()) =>
            {
                Ok(WeightedBackend {
                    url: url.to_string(),
                    // Too large for a u32 is out of range all the same.
                    weight: weight.parse().unwrap_or(u32::MAX),
                })
            }
            // An '@' in the authority can only be a weight's (credentials are refused); one
            // in the path is the path's.
            Some((url, _)) if !url.split_once("://").map_or(url, |(_, r)| r).contains('/') => Err(
                format!("'{item}': the weight after '@' must be a number from 1 to {MAX_WEIGHT}"),
            ),
            _ => Ok(WeightedBackend {
                url: item.to_string(),
                weight: 1,
            }),
        }
    }
}

impl fmt::Display for WeightedBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ambiguous = self
            .url
            .rsplit_once('@')
            .is_some_and(|(_, w)| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()));
        if self.weight == 1 && !ambiguous {
            f.write_str(&self.url)
        } else {
            write!(f, "{}@{}", self.url, self.weight)
        }
    }
}

/// An API's backends, in the order given (the order matters for nothing but display).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Backends(pub Vec<WeightedBackend>);

impl Backends {
    /// One backend of weight 1.
    pub fn one(url: impl Into<String>) -> Backends {
        Backends(vec![WeightedBackend {
            url: url.into(),
            weight: 1,
        }])
    }

    /// Reads the text form (see the module docs). It never fails: an item that does not parse
    /// is kept with weight 0, so that [`check`](Self::check) refuses it with the field named.
    pub fn from_text(text: &str) -> Backends {
        Backends(
            text.split_whitespace()
                .map(|item| {
                    WeightedBackend::parse(item).unwrap_or(WeightedBackend {
                        url: item.to_string(),
                        weight: 0,
                    })
                })
                .collect(),
        )
    }

    /// The text form (see the module docs).
    pub fn to_text(&self) -> String {
        self.to_string()
    }

    /// Whether this is one backend of weight 1: what an API had before several were possible,
    /// and what documents write as a plain `backend:`.
    pub fn is_single(&self) -> bool {
        matches!(self.0.as_slice(), [b] if b.weight == 1)
    }

    /// The first backend's URL ("" for none): what clients that know one backend are shown.
    pub fn first_url(&self) -> &str {
        self.0.first().map_or("", |b| b.url.as_str())
    }

    pub fn iter(&self) -> std::slice::Iter<'_, WeightedBackend> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The checks every write path (create, update, apply) makes: at least one and at most
    /// [`MAX_BACKENDS`] backends, each a valid URL with a weight from 1 to [`MAX_WEIGHT`], no
    /// URL twice. Errors name the field: `backend` for a single one, `backends[i].url` or
    /// `backends[i].weight` in a list.
    pub fn check(&self) -> Result<(), DomainError> {
        if self.0.is_empty() {
            return Err(DomainError::invalid(
                "backends",
                "at least one backend is required (http://HOST:PORT[/prefix][@WEIGHT])",
            ));
        }
        if self.0.len() > MAX_BACKENDS {
            return Err(DomainError::invalid(
                "backends",
                format!("at most {MAX_BACKENDS} backends, got {}", self.0.len()),
            ));
        }
        let single = self.0.len() == 1;
        let field = |i: usize, part: &str| {
            if single {
                if part == "url" {
                    "backend".to_string()
                } else {
                    format!("backend.{part}")
                }
            } else {
                format!("backends[{i}].{part}")
            }
        };
        for (i, b) in self.0.iter().enumerate() {
            validate::backend(&b.url).map_err(|e| match e {
                DomainError::Invalid { reason, .. } => DomainError::Invalid {
                    field: field(i, "url"),
                    reason,
                },
                other => other,
            })?;
            if !(1..=MAX_WEIGHT).contains(&b.weight) {
                return Err(DomainError::invalid(
                    &field(i, "weight"),
                    format!("must be 1..={MAX_WEIGHT}, got {}", b.weight),
                ));
            }
            if let Some(j) = self.0[..i].iter().position(|a| a.url == b.url) {
                return Err(DomainError::invalid(
                    &field(i, "url"),
                    format!("'{}' is already backends[{j}]", b.url),
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Backends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b}")?;
        }
        Ok(())
    }
}

impl From<&str> for Backends {
    /// One backend of weight 1 (what fixtures and older callers give).
    fn from(url: &str) -> Backends {
        Backends::one(url)
    }
}

impl From<String> for Backends {
    fn from(url: String) -> Backends {
        Backends::one(url)
    }
}

impl Serialize for Backends {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_text())
    }
}

impl<'de> Deserialize<'de> for Backends {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Backends, D::Error> {
        let text = String::deserialize(d)?;
        Ok(Backends::from_text(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(r: Result<(), DomainError>) -> String {
        match r {
            Err(DomainError::Invalid { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn text_form_round_trips() {
        for text in [
            "http://a:1",
            "http://a:1@3 http://b:2",
            "http://a:1/x@5@1 http://b:2@1000",
        ] {
            assert_eq!(Backends::from_text(text).to_text(), text);
        }
        let b = Backends::from_text("http://a:1@3 http://b:2");
        assert_eq!(b.0[0].weight, 3);
        assert_eq!(b.0[1].weight, 1);
        assert!(Backends::from_text("http://a:1").is_single());
        assert!(!Backends::from_text("http://a:1@2").is_single());
    }

    #[test]
    fn stored_form_of_one_backend_is_the_old_string() {
        // What snapshots and log entries written before this module hold for `backend`.
        let old = postcard::to_stdvec("http://127.0.0.1:9000").unwrap();
        let read: Backends = postcard::from_bytes(&old).unwrap();
        assert_eq!(read, Backends::one("http://127.0.0.1:9000"));
        assert_eq!(postcard::to_stdvec(&read).unwrap(), old);
        let json: Backends = serde_json::from_str("\"http://x:1\"").unwrap();
        assert_eq!(json, Backends::one("http://x:1"));
        let two = Backends::from_text("http://a:1@3 http://b:2");
        let back: Backends = postcard::from_bytes(&postcard::to_stdvec(&two).unwrap()).unwrap();
        assert_eq!(back, two);
    }

    #[test]
    fn items_parse_with_optional_weight() {
        let b = WeightedBackend::parse("http://a:1/p@7").unwrap();
        assert_eq!((b.url.as_str(), b.weight), ("http://a:1/p", 7));
        assert_eq!(WeightedBackend::parse("http://a:1").unwrap().weight, 1);
        assert!(WeightedBackend::parse("http://a:1@x").is_err());
        // An '@' in the path is the path's.
        let b = WeightedBackend::parse("http://a:1/users@me").unwrap();
        assert_eq!((b.url.as_str(), b.weight), ("http://a:1/users@me", 1));
        assert!(Backends::one("http://a:1/users@me").check().is_ok());
        assert_eq!(
            WeightedBackend::parse("http://a:1@99999999999")
                .unwrap()
                .weight,
            u32::MAX
        );
    }

    #[test]
    fn checks_name_the_field_and_index() {
        assert!(
            Backends::from_text("http://a:1@3 http://b:2")
                .check()
                .is_ok()
        );
        assert_eq!(field(Backends(vec![]).check()), "backends");
        assert_eq!(
            field(Backends::from_text("http://a:1 http://b:2 http://c:3@0").check()),
            "backends[2].weight"
        );
        assert_eq!(
            field(Backends::from_text("http://a:1 http://b:2@1001").check()),
            "backends[1].weight"
        );
        assert_eq!(
            field(Backends::from_text("http://a:1 ftp://b").check()),
            "backends[1].url"
        );
        let dup = Backends::from_text("http://a:1 http://a:1@2").check();
        assert_eq!(field(dup.clone()), "backends[1].url");
        assert!(dup.unwrap_err().to_string().contains("already backends[0]"));
        assert_eq!(field(Backends::one("ftp://x").check()), "backend");
        let many = (0..33)
            .map(|i| format!("http://h:{}", 1000 + i))
            .collect::<Vec<_>>();
        assert_eq!(
            field(Backends::from_text(&many.join(" ")).check()),
            "backends"
        );
    }
}
