//! `service-resolver`: which instances serve a service, in Consul's JSON shape — named
//! `Subsets` (a filter expression over instance and node, see [`crate::filter`]), the
//! `DefaultSubset`, a `Redirect` to another service, `Failover` targets per subset (or `*`),
//! and `ConnectTimeout` / `RequestTimeout` (Go durations; the request timeout is stored, not
//! yet acted on). Resolvers are allowed on tcp services.

use serde::{Deserialize, Serialize};

use super::{check_duration, check_service_name, ConfigEntry, EntryError};

fn is_false(b: &bool) -> bool {
    !*b
}

/// One of `Subsets`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ResolverSubset {
    /// A filter expression (`Service.Meta.version == "v2"`); empty: every instance.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub filter: String,
    /// Only instances whose checks all pass (warning excluded).
    #[serde(default, skip_serializing_if = "is_false")]
    pub only_passing: bool,
}

/// `Redirect`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ResolverRedirect {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_subset: String,
}

/// One target of a failover's `Targets`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct FailoverTarget {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_subset: String,
}

/// A value of `Failover`: either `Service`/`ServiceSubset` or `Targets`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ResolverFailover {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_subset: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<FailoverTarget>,
}

/// A subset name: lowercase letters, digits and `-`, starting and ending alphanumeric.
fn valid_subset_name(name: &str) -> bool {
    let ok_end = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    name.len() <= 63
        && ok_end(name.chars().next())
        && ok_end(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub(super) fn validate(entry: &ConfigEntry) -> Result<(), EntryError> {
    let subsets = entry.subsets.as_ref();
    for (name, subset) in subsets.into_iter().flatten() {
        if !valid_subset_name(name) {
            return Err(EntryError::new(
                format!("Subsets.{name}"),
                "a subset name is lowercase letters, digits and '-', at most 63",
            ));
        }
        if !subset.filter.is_empty() {
            crate::filter::Filter::parse(&subset.filter)
                .map_err(|e| EntryError::new(format!("Subsets.{name}.Filter"), e.to_string()))?;
        }
    }
    let has_subset = |s: &str| subsets.is_some_and(|m| m.contains_key(s));
    if let Some(d) = entry.default_subset.as_deref() {
        if !d.is_empty() && !has_subset(d) {
            return Err(EntryError::new(
                "DefaultSubset",
                format!("{d:?} is not one of Subsets"),
            ));
        }
    }
    if let Some(r) = &entry.redirect {
        for (field, set) in [
            ("Subsets", subsets.is_some_and(|m| !m.is_empty())),
            ("DefaultSubset", entry.default_subset.is_some()),
            ("Failover", entry.failover.is_some()),
        ] {
            if set {
                return Err(EntryError::new(
                    "Redirect",
                    format!("cannot be set together with {field}"),
                ));
            }
        }
        if r.service.is_empty() && r.service_subset.is_empty() {
            return Err(EntryError::new(
                "Redirect",
                "needs Service or ServiceSubset",
            ));
        }
        if !r.service.is_empty() {
            check_service_name("Redirect.Service", &r.service)?;
        }
        if !r.service_subset.is_empty() && (r.service.is_empty() || r.service == entry.name) {
            return Err(EntryError::new(
                "Redirect.ServiceSubset",
                "a redirect to a subset of this service: use DefaultSubset",
            ));
        }
        if r.service == entry.name && r.service_subset.is_empty() {
            return Err(EntryError::new("Redirect.Service", "redirects to itself"));
        }
    }
    for (key, f) in entry.failover.iter().flatten() {
        let at = format!("Failover.{key}");
        if key != "*" && !has_subset(key) {
            return Err(EntryError::new(
                &at,
                format!("{key:?} is neither \"*\" nor one of Subsets"),
            ));
        }
        let single = !f.service.is_empty() || !f.service_subset.is_empty();
        if single && !f.targets.is_empty() {
            return Err(EntryError::new(
                format!("{at}.Targets"),
                "cannot be set together with Service or ServiceSubset",
            ));
        }
        if !single && f.targets.is_empty() {
            return Err(EntryError::new(
                &at,
                "needs Service, ServiceSubset or Targets",
            ));
        }
        let targets = std::iter::once((at.clone(), &f.service, &f.service_subset))
            .filter(|_| single)
            .chain(
                f.targets
                    .iter()
                    .enumerate()
                    .map(|(i, t)| (format!("{at}.Targets[{i}]"), &t.service, &t.service_subset)),
            );
        for (tat, service, subset) in targets {
            if !service.is_empty() {
                check_service_name(&format!("{tat}.Service"), service)?;
            }
            let own = service.is_empty() || *service == entry.name;
            if own && !subset.is_empty() && !has_subset(subset) {
                return Err(EntryError::new(
                    format!("{tat}.ServiceSubset"),
                    format!("{subset:?} is not one of Subsets"),
                ));
            }
            if own && subset.is_empty() && service.is_empty() {
                return Err(EntryError::new(&tat, "needs Service or ServiceSubset"));
            }
        }
    }
    for (field, value) in [
        ("ConnectTimeout", &entry.connect_timeout),
        ("RequestTimeout", &entry.request_timeout),
    ] {
        if let Some(v) = value {
            check_duration(field, v)?;
        }
    }
    Ok(())
}
