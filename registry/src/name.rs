//! The one rule for service names, checked wherever a service name enters the mesh:
//! registrations, upstream destinations, intentions, config entries and leaf certificates.
//!
//! A service name has to work in every place meshd puts it: one DNS label
//! (`<svc>.service.<domain>`, `<svc>.virtual.<domain>`, `_<svc>._<tag>.service.<domain>`), one
//! segment of the SPIFFE URI of its certificate (`spiffe://<td>/svc/<svc>`) and a URL path
//! segment of the HTTP API. So it is 1 to [`MAX_SERVICE_NAME_LEN`] bytes of ASCII letters,
//! digits, `-` and `_`, and starts with a letter or a digit: a `.` would split the DNS label,
//! a leading `_` reads as an RFC 2782 service label, a leading `-` as a command-line flag.
//! Letters keep their case, as in Consul; DNS answers match them exactly first.
//!
//! Node names keep their own, older rule ([`crate::ca::validate_node_name`]).

/// The longest service name, in bytes: one DNS label (RFC 1035).
pub const MAX_SERVICE_NAME_LEN: usize = 63;

/// What is wrong with a service name. Positions count characters from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("service name is empty")]
    Empty,
    #[error(
        "service name {name:?} is {len} bytes long; the limit is {MAX_SERVICE_NAME_LEN} \
         (one DNS label)"
    )]
    TooLong { name: String, len: usize },
    #[error(
        "service name {name:?} starts with {found:?}: it must start with an ASCII letter or digit"
    )]
    BadStart { name: String, found: char },
    #[error(
        "service name {name:?} has {found:?} at position {position}: only ASCII letters, \
         digits, '-' and '_' are allowed"
    )]
    BadChar {
        name: String,
        position: usize,
        found: char,
    },
}

/// Checks a service name against the rule of the module doc.
pub fn validate_service_name(name: &str) -> Result<(), NameError> {
    let Some(first) = name.chars().next() else {
        return Err(NameError::Empty);
    };
    if name.len() > MAX_SERVICE_NAME_LEN {
        return Err(NameError::TooLong {
            name: name.to_string(),
            len: name.len(),
        });
    }
    if !first.is_ascii_alphanumeric() {
        return Err(NameError::BadStart {
            name: name.to_string(),
            found: first,
        });
    }
    let bad = name
        .chars()
        .enumerate()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')));
    match bad {
        Some((i, found)) => Err(NameError::BadChar {
            name: name.to_string(),
            position: i + 1,
            found,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(name: &str) -> String {
        match validate_service_name(name) {
            Ok(()) => panic!("{name:?} accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn accepts_dns_labels() {
        let longest = "x".repeat(MAX_SERVICE_NAME_LEN);
        for ok in [
            "a", "web", "web-1", "Web_API", "9lives", "a-", "a_", &longest,
        ] {
            assert_eq!(validate_service_name(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn each_rejection_says_what_is_wrong() {
        assert_eq!(message(""), "service name is empty");
        let long = "x".repeat(MAX_SERVICE_NAME_LEN + 1);
        assert_eq!(
            message(&long),
            format!("service name {long:?} is 64 bytes long; the limit is 63 (one DNS label)")
        );
        // Bytes, not characters: 32 two-byte letters are 64 bytes.
        assert!(message(&"é".repeat(32)).contains("is 64 bytes long"));
        assert_eq!(
            message("-web"),
            "service name \"-web\" starts with '-': it must start with an ASCII letter or digit"
        );
        assert_eq!(
            message("_web"),
            "service name \"_web\" starts with '_': it must start with an ASCII letter or digit"
        );
        assert_eq!(
            message("web#2"),
            "service name \"web#2\" has '#' at position 4: only ASCII letters, digits, '-' \
             and '_' are allowed"
        );
        for (name, found, position) in [
            ("web.v2", '.', 4),
            ("a b", ' ', 2),
            ("a/b", '/', 2),
            ("a?b", '?', 2),
            ("a\u{7}", '\u{7}', 2),
            ("caf\u{e9}", '\u{e9}', 4),
            ("a*", '*', 2),
        ] {
            assert_eq!(
                validate_service_name(name),
                Err(NameError::BadChar {
                    name: name.to_string(),
                    position,
                    found,
                }),
                "{name:?}"
            );
        }
        assert_eq!(
            validate_service_name("é"),
            Err(NameError::BadStart {
                name: "é".into(),
                found: 'é'
            })
        );
    }

    #[test]
    fn every_service_name_is_a_valid_node_name() {
        // Certificates check names with the node rule: the service rule must be narrower.
        for ok in ["a", "web-1", "Web_API", &"x".repeat(MAX_SERVICE_NAME_LEN)] {
            assert!(validate_service_name(ok).is_ok());
            assert!(crate::ca::validate_node_name(ok).is_ok(), "{ok:?}");
        }
    }
}
