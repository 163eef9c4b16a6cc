//! The gateway's catalog: what can be bought and what it costs.
//!
//! This crate owns the dedicated-instance specs (name, maximum requests per second, SLA), the
//! regions (with the cloud's region ids), and the price tables of the pricing document: the
//! shared instance's graduated call tiers and free quota, the dedicated instances' pay-as-you-go,
//! monthly and annual prices per region, and the outbound traffic price per GB per region.
//!
//! The built-in catalog is `data/catalog.toml`, compiled into the crate; an operator can load
//! their own file with [`Catalog::from_file`]. Money is exact: [`Usd`] counts micro-dollars.

mod money;

pub use money::{ParseUsdError, Usd, parse_millionths, write_millionths};

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

/// The catalog compiled into the crate.
const BUILTIN_TOML: &str = include_str!("../data/catalog.toml");

/// The name of the built-in shared instance every cluster has.
pub const SHARED_INSTANCE: &str = "shared";

/// Why a catalog could not be loaded, or a name could not be found in it.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("catalog is not valid TOML: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("catalog is inconsistent: {0}")]
    Invalid(String),
    #[error("unknown spec '{given}'; valid specs are: {}", valid.join(", "))]
    UnknownSpec { given: String, valid: Vec<String> },
    #[error("unknown region '{given}'; valid regions are: {}", valid.join(", "))]
    UnknownRegion { given: String, valid: Vec<String> },
}

/// A dedicated instance type, e.g. `api.s1.small`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub name: String,
    /// The instance's cluster-wide ceiling, in requests per second.
    pub max_rps: u32,
    /// The availability the spec promises, e.g. `99.95%`.
    pub sla: String,
}

/// The prices of one spec in one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecPrice {
    pub payg_per_hour: Usd,
    pub monthly: Usd,
    /// A whole year's subscription (the document's "annual" column).
    pub annual_per_year: Usd,
}

/// A region the gateway can be deployed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    /// The cloud's region id, e.g. `cn-hongkong`.
    pub id: String,
    /// The human name, e.g. `China (Hong Kong)`.
    pub name: String,
    /// Outbound traffic to the internet, per GB.
    pub traffic_per_gb: Usd,
    /// Dedicated instance prices by spec name.
    pub spec_prices: BTreeMap<String, SpecPrice>,
}

/// One graduated tier of shared-instance call prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallTier {
    /// The monthly call count this tier runs up to (inclusive); `None` for the last tier.
    pub up_to_calls: Option<u64>,
    pub per_million_calls: Usd,
}

/// The shared instance's call pricing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedPricing {
    pub free_calls_per_month: u64,
    /// How many months from an account's creation the free quota applies.
    pub free_quota_months: u32,
    pub tiers: Vec<CallTier>,
}

/// The whole catalog: specs, regions and prices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    specs: Vec<Spec>,
    regions: Vec<Region>,
    shared: SharedPricing,
    /// See [`Catalog::fingerprint`]; computed once, when the catalog is loaded.
    fingerprint: String,
}

impl Catalog {
    /// The catalog that ships with the gateway, parsed once.
    pub fn builtin() -> &'static Catalog {
        static BUILTIN: OnceLock<Catalog> = OnceLock::new();
        BUILTIN.get_or_init(|| {
            Catalog::from_toml_str(BUILTIN_TOML).expect("the built-in catalog is valid")
        })
    }

    /// Loads an operator-supplied catalog file.
    pub fn from_file(path: &Path) -> Result<Catalog, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Catalog::from_toml_str(&text)
    }

    /// Parses and checks a catalog: every region must price every spec, tiers must ascend.
    pub fn from_toml_str(text: &str) -> Result<Catalog, CatalogError> {
        let file: file::CatalogFile = toml::from_str(text)?;
        file.into_catalog()
    }

    /// A fingerprint of everything the catalog prices with: every node of a cluster must bill
    /// with the same catalog, or their replicated bills would differ. The replicated state
    /// records the fingerprint of the catalog it was built with, and a node whose own differs
    /// refuses to apply (see `model::State::apply`): the leader stamps it on every proposal.
    ///
    /// It hashes a canonical text of the values (not the file, so comments and layout do not
    /// count) with FNV-1a 64: the aim is to notice a different price list, not to resist a
    /// forger, who would be an operator able to replace the binary anyway.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn compute_fingerprint(&self) -> String {
        use std::fmt::Write as _;
        let mut text = String::new();
        for s in &self.specs {
            let _ = writeln!(text, "spec {} {} {}", s.name, s.max_rps, s.sla);
        }
        for r in &self.regions {
            let _ = writeln!(text, "region {} {} {}", r.id, r.name, r.traffic_per_gb);
            for (spec, p) in &r.spec_prices {
                let _ = writeln!(
                    text,
                    "price {spec} {} {} {}",
                    p.payg_per_hour, p.monthly, p.annual_per_year
                );
            }
        }
        let sh = &self.shared;
        let _ = writeln!(
            text,
            "shared {} {}",
            sh.free_calls_per_month, sh.free_quota_months
        );
        for t in &sh.tiers {
            let _ = writeln!(text, "tier {:?} {}", t.up_to_calls, t.per_million_calls);
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }

    pub fn specs(&self) -> &[Spec] {
        &self.specs
    }

    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    pub fn shared(&self) -> &SharedPricing {
        &self.shared
    }

    /// Looks a spec up by name; the error lists the valid names.
    pub fn spec(&self, name: &str) -> Result<&Spec, CatalogError> {
        self.specs
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| CatalogError::UnknownSpec {
                given: name.to_string(),
                valid: self.specs.iter().map(|s| s.name.clone()).collect(),
            })
    }

    /// Looks a region up by id; the error lists the valid ids.
    pub fn region(&self, id: &str) -> Result<&Region, CatalogError> {
        self.regions
            .iter()
            .find(|r| r.id == id)
            .ok_or_else(|| CatalogError::UnknownRegion {
                given: id.to_string(),
                valid: self.regions.iter().map(|r| r.id.clone()).collect(),
            })
    }

    /// The price of `spec` in `region`.
    pub fn spec_price(&self, region: &str, spec: &str) -> Result<SpecPrice, CatalogError> {
        let spec = self.spec(spec)?;
        let region = self.region(region)?;
        // `into_catalog` checked that every region prices every spec.
        Ok(region.spec_prices[&spec.name])
    }
}

/// The on-disk shape of the catalog file.
mod file {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct CatalogFile {
        sla: String,
        shared: SharedFile,
        specs: Vec<SpecFile>,
        price_tables: Vec<PriceTableFile>,
        regions: Vec<RegionFile>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SharedFile {
        free_calls_per_month: u64,
        free_quota_months: u32,
        tiers: Vec<TierFile>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct TierFile {
        up_to_calls: Option<u64>,
        usd_per_million_calls: Usd,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SpecFile {
        name: String,
        max_rps: u32,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PriceTableFile {
        name: String,
        rows: Vec<PriceRowFile>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PriceRowFile {
        spec: String,
        payg_usd_per_hour: Usd,
        monthly_usd: Usd,
        annual_usd_per_year: Usd,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RegionFile {
        id: String,
        name: String,
        traffic_usd_per_gb: Usd,
        price_table: String,
    }

    impl CatalogFile {
        pub(super) fn into_catalog(self) -> Result<Catalog, CatalogError> {
            let invalid = |msg: String| Err(CatalogError::Invalid(msg));
            if self.specs.is_empty() {
                return invalid("no specs".into());
            }
            let specs: Vec<Spec> = self
                .specs
                .into_iter()
                .map(|s| Spec {
                    name: s.name,
                    max_rps: s.max_rps,
                    sla: self.sla.clone(),
                })
                .collect();
            for (i, s) in specs.iter().enumerate() {
                if s.max_rps == 0 {
                    return invalid(format!("spec {} has max_rps 0", s.name));
                }
                if specs[..i].iter().any(|o| o.name == s.name) {
                    return invalid(format!("spec {} is listed twice", s.name));
                }
            }
            let mut tables: BTreeMap<String, BTreeMap<String, SpecPrice>> = BTreeMap::new();
            for t in self.price_tables {
                let mut rows = BTreeMap::new();
                for r in t.rows {
                    let price = SpecPrice {
                        payg_per_hour: r.payg_usd_per_hour,
                        monthly: r.monthly_usd,
                        annual_per_year: r.annual_usd_per_year,
                    };
                    if rows.insert(r.spec.clone(), price).is_some() {
                        return invalid(format!("price table {} lists {} twice", t.name, r.spec));
                    }
                }
                tables.insert(t.name, rows);
            }
            let mut regions = Vec::new();
            for r in self.regions {
                let Some(table) = tables.get(&r.price_table) else {
                    return invalid(format!(
                        "region {} names unknown price table {}",
                        r.id, r.price_table
                    ));
                };
                for s in &specs {
                    if !table.contains_key(&s.name) {
                        return invalid(format!("region {} has no price for {}", r.id, s.name));
                    }
                }
                if regions.iter().any(|o: &Region| o.id == r.id) {
                    return invalid(format!("region {} is listed twice", r.id));
                }
                regions.push(Region {
                    id: r.id,
                    name: r.name,
                    traffic_per_gb: r.traffic_usd_per_gb,
                    spec_prices: table.clone(),
                });
            }
            if regions.is_empty() {
                return invalid("no regions".into());
            }
            let tiers: Vec<CallTier> = self
                .shared
                .tiers
                .into_iter()
                .map(|t| CallTier {
                    up_to_calls: t.up_to_calls,
                    per_million_calls: t.usd_per_million_calls,
                })
                .collect();
            check_tiers(&tiers).map_err(CatalogError::Invalid)?;
            let mut catalog = Catalog {
                specs,
                regions,
                shared: SharedPricing {
                    free_calls_per_month: self.shared.free_calls_per_month,
                    free_quota_months: self.shared.free_quota_months,
                    tiers,
                },
                fingerprint: String::new(),
            };
            catalog.fingerprint = catalog.compute_fingerprint();
            Ok(catalog)
        }
    }

    /// Tiers must ascend strictly and end with one open-ended tier.
    fn check_tiers(tiers: &[CallTier]) -> Result<(), String> {
        let Some((last, rest)) = tiers.split_last() else {
            return Err("shared pricing has no tiers".into());
        };
        if last.up_to_calls.is_some() {
            return Err("the last shared tier must have no up_to_calls".into());
        }
        let mut prev = 0;
        for t in rest {
            match t.up_to_calls {
                Some(up) if up > prev => prev = up,
                _ => return Err("shared tiers must have ascending up_to_calls".into()),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_has_the_documents_specs_and_regions() {
        let c = Catalog::builtin();
        let names: Vec<_> = c
            .specs()
            .iter()
            .map(|s| (s.name.as_str(), s.max_rps))
            .collect();
        assert_eq!(
            names,
            [
                ("api.s1.small", 2500),
                ("api.s1.medium", 5000),
                ("api.s2.large", 10000),
                ("api.s2.large.x2", 20000),
                ("api.s2.large.x3", 30000),
                ("api.s2.large.x4", 40000),
                ("api.s2.large.x5", 50000),
                ("api.s2.large.x6", 60000),
            ]
        );
        assert!(c.specs().iter().all(|s| s.sla == "99.95%"));
        assert_eq!(c.regions().len(), 20);
        assert_eq!(
            c.region("cn-hongkong").unwrap().traffic_per_gb,
            Usd::parse("0.156").unwrap()
        );
        let sg = c.spec_price("ap-southeast-1", "api.s1.small").unwrap();
        assert_eq!(sg.payg_per_hour, Usd::parse("0.93").unwrap());
        assert_eq!(sg.monthly, Usd::parse("560").unwrap());
    }

    #[test]
    fn annual_column_is_a_years_price_at_fifteen_percent_off() {
        // The document's "annual (US$/month)" column is 12 x monthly x 0.85: check every cell.
        for r in Catalog::builtin().regions() {
            for (spec, p) in &r.spec_prices {
                let expected = p.monthly.micros() * 12 * 85 / 100;
                assert_eq!(p.annual_per_year.micros(), expected, "{} {}", r.id, spec);
            }
        }
    }

    #[test]
    fn unknown_names_list_the_valid_ones() {
        let c = Catalog::builtin();
        let e = c.spec("api.s9.huge").unwrap_err().to_string();
        assert!(
            e.contains("api.s9.huge") && e.contains("api.s1.small, api.s1.medium"),
            "{e}"
        );
        let e = c.region("mars-1").unwrap_err().to_string();
        assert!(e.contains("mars-1") && e.contains("cn-hongkong"), "{e}");
    }

    #[test]
    fn inconsistent_files_are_refused() {
        let text = BUILTIN_TOML.replace("price_table = \"middle-east\"", "price_table = \"nope\"");
        let e = Catalog::from_toml_str(&text).unwrap_err().to_string();
        assert!(e.contains("unknown price table nope"), "{e}");
        let text = BUILTIN_TOML.replace("up_to_calls = 100000000", "up_to_calls = 5");
        assert!(Catalog::from_toml_str(&text).is_err());
    }
}
