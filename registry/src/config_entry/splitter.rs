//! `service-splitter`: weighted splits of a service's traffic, in Consul's JSON shape. Weights
//! are percentages with a precision of 0.01 and sum to 100.

use serde::{Deserialize, Serialize};

use super::router::{check_header_mods, HeaderModifiers};
use super::{check_service_name, ConfigEntry, EntryError};

/// One split of `Splits`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ServiceSplit {
    /// Percent of the traffic, 0 to 100, in steps of 0.01.
    pub weight: f32,
    /// Empty: the splitter's own service.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_subset: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderModifiers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderModifiers>,
}

impl ServiceSplit {
    /// The weight in 1/100 of a percent (10000 is all the traffic).
    pub fn weight_bp(&self) -> u32 {
        (f64::from(self.weight) * 100.0).round().clamp(0.0, 10000.0) as u32
    }
}

pub(super) fn validate(entry: &ConfigEntry) -> Result<(), EntryError> {
    let splits = entry.splits.as_deref().unwrap_or_default();
    if splits.is_empty() {
        return Err(EntryError::new("Splits", "at least one split is required"));
    }
    let mut sum = 0u32;
    for (i, s) in splits.iter().enumerate() {
        let at = format!("Splits[{i}]");
        let w = f64::from(s.weight);
        if !w.is_finite() || !(0.0..=100.0).contains(&w) {
            return Err(EntryError::new(
                format!("{at}.Weight"),
                format!("{} is not a percentage from 0 to 100", s.weight),
            ));
        }
        if (w * 100.0 - (w * 100.0).round()).abs() > 0.01 {
            return Err(EntryError::new(
                format!("{at}.Weight"),
                format!("{} has more precision than 0.01", s.weight),
            ));
        }
        sum += s.weight_bp();
        if !s.service.is_empty() {
            check_service_name(&format!("{at}.Service"), &s.service)?;
        }
        check_header_mods(&format!("{at}.RequestHeaders"), s.request_headers.as_ref())?;
        check_header_mods(
            &format!("{at}.ResponseHeaders"),
            s.response_headers.as_ref(),
        )?;
    }
    if sum != 10000 {
        return Err(EntryError::new(
            "Splits",
            format!("weights sum to {}, not 100", f64::from(sum) / 100.0),
        ));
    }
    Ok(())
}
