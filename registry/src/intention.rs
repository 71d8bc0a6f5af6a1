//! Intentions: which callers may open connections to which services (layer 4), as Consul
//! models them, and the cluster-wide default for callers no intention names.
//!
//! An intention names a source (a service, a node when `SourceType` is `node`, or `*`) and a
//! destination service (or `*`), with `allow` or `deny`. For one caller and destination the
//! matching intention with the highest precedence decides: exact destination over wildcard
//! destination, then exact source over wildcard source (Consul's 9, 8, 6, 5 without
//! namespaces). A source/destination pair has at most one intention.

use serde::{Deserialize, Serialize};

use crate::command::Response;
use crate::state::State;

/// The wildcard of a source or destination name.
pub const WILDCARD: &str = "*";
/// `SourceType` of an intention whose source is a service (Consul's only type).
pub const SOURCE_SERVICE: &str = "consul";
/// `SourceType` of an intention whose source is a node identity (traffic with no service
/// identity, see the data plane's "who is calling").
pub const SOURCE_NODE: &str = "node";

/// What an intention does to a matching connection.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

impl Action {
    pub fn parse(s: &str) -> Result<Action, String> {
        match s {
            "allow" => Ok(Action::Allow),
            "deny" => Ok(Action::Deny),
            other => Err(format!(
                "invalid intention action {other:?}: use \"allow\" or \"deny\""
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// One intention, in Consul's JSON shape.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Intention {
    #[serde(rename = "ID")]
    pub id: String,
    pub description: String,
    pub source_name: String,
    pub destination_name: String,
    pub source_type: String,
    pub action: Action,
    #[serde(default)]
    pub meta: std::collections::BTreeMap<String, String>,
    /// Derived from the names: 9 exact/exact, 8 wildcard source, 6 wildcard destination, 5 both.
    pub precedence: u32,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Intention {
    /// Checks names and type; fills `precedence` and a default `SourceType`.
    pub fn normalize(&mut self) -> Result<(), String> {
        if self.source_type.is_empty() {
            self.source_type = SOURCE_SERVICE.into();
        }
        if self.source_type != SOURCE_SERVICE && self.source_type != SOURCE_NODE {
            return Err(format!(
                "invalid SourceType {:?}: use \"consul\" (a service) or \"node\"",
                self.source_type
            ));
        }
        for (what, name) in [
            ("SourceName", &self.source_name),
            ("DestinationName", &self.destination_name),
        ] {
            if name != WILDCARD {
                crate::ca::validate_node_name(name)
                    .map_err(|e| format!("invalid {what} {name:?}: {e}"))?;
            }
        }
        self.precedence = precedence(&self.source_name, &self.destination_name);
        Ok(())
    }

    /// Checks the names as a new intention must have them: a service name (see
    /// [`crate::name`]) or the `*` wildcard, and a node name for a `node` source. Called where
    /// an intention enters (the API), not by [`Intention::normalize`]: a log entry written
    /// under the older, wider rule must still apply the same way.
    pub fn check_names(&self) -> Result<(), String> {
        if self.source_name != WILDCARD {
            let source = &self.source_name;
            if self.source_type == SOURCE_NODE {
                crate::ca::validate_node_name(source)
                    .map_err(|e| format!("invalid SourceName {source:?}: {e}"))?;
            } else {
                crate::name::validate_service_name(source)
                    .map_err(|e| format!("invalid SourceName: {e}"))?;
            }
        }
        if self.destination_name != WILDCARD {
            crate::name::validate_service_name(&self.destination_name)
                .map_err(|e| format!("invalid DestinationName: {e}"))?;
        }
        Ok(())
    }

    /// Whether this intention is the one of that source/destination pair.
    pub fn same_pair(&self, source_type: &str, source: &str, destination: &str) -> bool {
        self.source_type == source_type
            && self.source_name == source
            && self.destination_name == destination
    }
}

/// Consul's precedence without namespaces.
pub fn precedence(source: &str, destination: &str) -> u32 {
    match (source == WILDCARD, destination == WILDCARD) {
        (false, false) => 9,
        (true, false) => 8,
        (false, true) => 6,
        (true, true) => 5,
    }
}

/// Who is calling, as the receiving side knows it from the caller's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller<'a> {
    Service(&'a str),
    Node(&'a str),
}

/// The decision for one caller and destination.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// The intention that decided, or `None` when the default policy did.
    pub matched: Option<Intention>,
}

impl State {
    /// Every intention, by precedence (highest first), then source and destination.
    pub fn intentions(&self) -> Vec<&Intention> {
        let mut v: Vec<&Intention> = self.intentions.values().collect();
        v.sort_by(|a, b| {
            b.precedence
                .cmp(&a.precedence)
                .then_with(|| a.destination_name.cmp(&b.destination_name))
                .then_with(|| a.source_name.cmp(&b.source_name))
        });
        v
    }

    pub fn intention(&self, id: &str) -> Option<&Intention> {
        self.intentions.get(id)
    }

    /// The intention of exactly this pair (service source unless `source_type` says node).
    pub fn intention_exact(
        &self,
        source_type: &str,
        source: &str,
        destination: &str,
    ) -> Option<&Intention> {
        self.intentions
            .values()
            .find(|i| i.same_pair(source_type, source, destination))
    }

    /// The cluster-wide policy for callers no intention names (`allow` until set).
    pub fn default_intention_policy(&self) -> Action {
        self.intention_default.unwrap_or_default()
    }

    pub fn intentions_index(&self) -> u64 {
        self.indexes.intentions.max(self.indexes.restore)
    }

    /// Whether `caller` may connect to `destination`.
    pub fn check_intention(&self, caller: Caller<'_>, destination: &str) -> Decision {
        let (kind, name) = match caller {
            Caller::Service(n) => (SOURCE_SERVICE, n),
            Caller::Node(n) => (SOURCE_NODE, n),
        };
        let best = self
            .intentions
            .values()
            .filter(|i| i.destination_name == destination || i.destination_name == WILDCARD)
            .filter(|i| {
                i.source_name == WILDCARD || (i.source_type == kind && i.source_name == name)
            })
            .max_by_key(|i| i.precedence);
        match best {
            Some(i) => Decision {
                allowed: i.action == Action::Allow,
                matched: Some(i.clone()),
            },
            None => Decision {
                allowed: self.default_intention_policy() == Action::Allow,
                matched: None,
            },
        }
    }

    /// Upserts an intention by its source/destination pair (keeping the existing ID and
    /// creation index); with `create_only`, an existing pair is refused.
    pub(crate) fn intention_set(
        &mut self,
        index: u64,
        intention: &Intention,
        create_only: bool,
    ) -> Response {
        let mut new = intention.clone();
        if let Err(e) = new.normalize() {
            return Response::Rejected(e);
        }
        let existing = self
            .intention_exact(&new.source_type, &new.source_name, &new.destination_name)
            .map(|i| (i.id.clone(), i.create_index));
        match existing {
            Some((id, _)) if create_only => {
                return Response::Rejected(format!(
                    "duplicate intention found: {} => {} already exists as {id}",
                    new.source_name, new.destination_name
                ))
            }
            Some((id, create_index)) => {
                new.id = id;
                new.create_index = create_index;
            }
            None => {
                if new.id.is_empty() {
                    return Response::Rejected("intention ID must be set".into());
                }
                if self.intentions.contains_key(&new.id) {
                    return Response::Rejected(format!("intention ID {} is taken", new.id));
                }
                new.create_index = index;
            }
        }
        new.modify_index = index;
        self.intentions.insert(new.id.clone(), new);
        self.indexes.intentions = index;
        Response::Done
    }

    /// Deletes the intention with `id`, or else the one of the pair; deleting one that does
    /// not exist is done without change (as Consul).
    pub(crate) fn intention_delete(
        &mut self,
        index: u64,
        id: Option<&str>,
        pair: Option<(&str, &str, &str)>,
    ) -> Response {
        let key = match (id, pair) {
            (Some(id), _) => Some(id.to_string()),
            (None, Some((t, s, d))) => self.intention_exact(t, s, d).map(|i| i.id.clone()),
            (None, None) => {
                return Response::Rejected("intention delete: name an ID or a pair".into())
            }
        };
        if let Some(k) = key {
            if self.intentions.remove(&k).is_some() {
                self.indexes.intentions = index;
            }
        }
        Response::Done
    }

    pub(crate) fn set_default_intention_policy(&mut self, index: u64, action: Action) -> Response {
        if self.intention_default != Some(action) {
            self.intention_default = Some(action);
            self.indexes.intentions = index;
        }
        Response::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;

    fn intention(id: &str, src: &str, dst: &str, action: Action) -> Intention {
        Intention {
            id: id.into(),
            source_name: src.into(),
            destination_name: dst.into(),
            action,
            ..Intention::default()
        }
    }

    fn set(st: &mut State, index: u64, i: Intention) -> Response {
        st.apply(
            index,
            &Command::IntentionSet {
                intention: i,
                create_only: true,
            },
        )
    }

    #[test]
    fn exact_beats_wildcard_and_the_default_decides_the_rest() {
        let mut st = State::new();
        assert!(st.check_intention(Caller::Service("web"), "api").allowed);
        st.apply(
            1,
            &Command::DefaultIntentionPolicy {
                action: Action::Deny,
            },
        );
        let d = st.check_intention(Caller::Service("web"), "api");
        assert!(!d.allowed && d.matched.is_none());

        assert_eq!(
            set(&mut st, 2, intention("a", "*", "api", Action::Allow)),
            Response::Done
        );
        assert_eq!(
            set(&mut st, 3, intention("b", "web", "api", Action::Deny)),
            Response::Done
        );
        assert_eq!(
            set(&mut st, 4, intention("c", "web", "*", Action::Allow)),
            Response::Done
        );
        let d = st.check_intention(Caller::Service("web"), "api");
        assert!(!d.allowed);
        assert_eq!(d.matched.map(|i| i.precedence), Some(9));
        assert!(st.check_intention(Caller::Service("batch"), "api").allowed);
        assert!(st.check_intention(Caller::Service("web"), "db").allowed);
        assert!(!st.check_intention(Caller::Service("batch"), "db").allowed);
        // A node identity is matched by wildcards and node intentions only.
        assert!(st.check_intention(Caller::Node("web"), "api").allowed);
        let mut n = intention("d", "host-1", "api", Action::Deny);
        n.source_type = SOURCE_NODE.into();
        assert_eq!(set(&mut st, 5, n), Response::Done);
        assert!(!st.check_intention(Caller::Node("host-1"), "api").allowed);
        assert!(st.check_intention(Caller::Service("host-1"), "api").allowed);
        let order: Vec<u32> = st.intentions().iter().map(|i| i.precedence).collect();
        assert_eq!(order, vec![9, 9, 8, 6]);
    }

    #[test]
    fn pairs_are_unique_and_bad_names_change_nothing() {
        let mut st = State::new();
        assert_eq!(
            set(&mut st, 1, intention("a", "web", "api", Action::Allow)),
            Response::Done
        );
        let dup = set(&mut st, 2, intention("b", "web", "api", Action::Deny));
        assert!(matches!(dup, Response::Rejected(m) if m.contains("duplicate")));
        // Upsert keeps the ID and creation index.
        st.apply(
            3,
            &Command::IntentionSet {
                intention: intention("ignored", "web", "api", Action::Deny),
                create_only: false,
            },
        );
        let i = st.intention("a").expect("kept its ID");
        assert_eq!(
            (i.action, i.create_index, i.modify_index),
            (Action::Deny, 1, 3)
        );
        for bad in [
            intention("x", "", "api", Action::Allow),
            intention("x", "web", "bad name", Action::Allow),
        ] {
            assert!(matches!(set(&mut st, 4, bad), Response::Rejected(_)));
        }
        let mut t = intention("x", "web", "db", Action::Allow);
        t.source_type = "other".into();
        assert!(matches!(set(&mut st, 4, t), Response::Rejected(_)));
        assert_eq!(st.intentions().len(), 1);
        assert_eq!(st.intentions_index(), 3);
        st.apply(
            5,
            &Command::IntentionDelete {
                id: None,
                source_type: SOURCE_SERVICE.into(),
                source: "web".into(),
                destination: "api".into(),
            },
        );
        assert!(st.intentions().is_empty());
        assert_eq!(st.intentions_index(), 5);
    }

    #[test]
    fn new_intentions_name_services_by_the_service_rule() {
        let ok = |src: &str, dst: &str| intention("x", src, dst, Action::Allow).check_names();
        assert_eq!(ok("web", "api"), Ok(()));
        assert_eq!(ok("*", "*"), Ok(()));
        assert_eq!(
            ok("web.v2", "api"),
            Err(
                "invalid SourceName: service name \"web.v2\" has '.' at position 4: only \
                 ASCII letters, digits, '-' and '_' are allowed"
                    .into()
            )
        );
        assert_eq!(
            ok("web", ""),
            Err("invalid DestinationName: service name is empty".into())
        );
        let e = ok("web", &"a".repeat(64)).expect_err("too long");
        assert!(
            e.starts_with("invalid DestinationName: service name"),
            "{e}"
        );
        // A node source keeps the node rule, dots included.
        let mut n = intention("x", "host-1.dc1", "api", Action::Allow);
        n.source_type = SOURCE_NODE.into();
        assert_eq!(n.check_names(), Ok(()));
        n.source_name = "bad name".into();
        assert!(n.check_names().is_err());
        // Applying stays on the older rule, so old log entries replay the same.
        let mut st = State::new();
        let old = intention("a", "web.v2", "api", Action::Allow);
        assert_eq!(set(&mut st, 1, old), Response::Done);
    }

    #[test]
    fn intentions_survive_an_image_round_trip() {
        let mut st = State::new();
        set(&mut st, 1, intention("a", "web", "api", Action::Deny));
        st.apply(
            2,
            &Command::DefaultIntentionPolicy {
                action: Action::Deny,
            },
        );
        let back = State::from_image(st.image());
        assert_eq!(back, st);
    }
}
