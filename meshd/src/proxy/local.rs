//! This host's services and the users their instances run as: whom a connection that starts
//! on this host speaks for. Part of the decision [`Table`](super::decide::Table).

use std::sync::Arc;

use registry::state::State;

/// This host's services and their users. A persistent map, so that a registration on a host
/// with thousands of services changes one entry instead of copying them all.
#[derive(Clone, Default)]
pub struct LocalServices {
    /// Service name → the users its instances here declare (sorted, `""` for none).
    by_name: imbl::OrdMap<String, Arc<[String]>>,
    /// How many names have an instance that declares a user.
    with_user: usize,
}

impl LocalServices {
    /// Every service of `node` in `st`.
    pub(super) fn of(node: &str, st: &State) -> LocalServices {
        let mut users: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for s in st.node_services(node) {
            users.entry(&s.service).or_default().push(s.user.clone());
        }
        let mut local = LocalServices::default();
        for (name, users) in users {
            local.set(name, users);
        }
        local
    }

    /// `name`'s entry as `node` has it in `st` now (gone when no instance is left).
    pub(super) fn refresh(&mut self, node: &str, st: &State, name: &str) {
        let users = st
            .service_instances_on(name, node)
            .map(|s| s.user.clone())
            .collect();
        self.set(name, users);
    }

    fn set(&mut self, name: &str, mut users: Vec<String>) {
        users.sort_unstable();
        users.dedup();
        let declares = |u: &[String]| u.iter().any(|u| !u.is_empty());
        let new = (!users.is_empty()).then(|| Arc::<[String]>::from(users));
        let old = match &new {
            Some(u) => self.by_name.insert(name.to_string(), u.clone()),
            None => self.by_name.remove(name),
        };
        self.with_user -= usize::from(old.is_some_and(|u| declares(&u)));
        self.with_user += usize::from(new.is_some_and(|u| declares(&u)));
    }

    /// Whether some service here declares the user it runs as.
    pub fn declare_users(&self) -> bool {
        self.with_user > 0
    }

    /// The services with an instance whose declared user `is_caller` accepts.
    pub fn run_by<'a>(
        &'a self,
        is_caller: impl Fn(&str) -> bool + 'a,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.by_name
            .iter()
            .filter(move |(_, users)| users.iter().any(|u| !u.is_empty() && is_caller(u)))
            .map(|(name, _)| name.as_str())
    }

    /// The host's only service, when it has exactly one.
    pub fn only(&self) -> Option<&str> {
        let mut names = self.by_name.keys();
        match (names.next(), names.next()) {
            (Some(name), None) => Some(name),
            _ => None,
        }
    }
}
