//! Which checks belong to which service instance: node → service ID → check IDs (a node's own
//! checks under the empty service ID).
//!
//! Derived from the checks table and kept in step with it by [`State`](crate::state::State)'s
//! only two writers of that table. Without it, an instance's health, the removal of a service
//! or a re-registration scanned every check of the node (or of the registry): a node with
//! thousands of services paid that once per service, so registering them was quadratic.

use std::collections::{BTreeSet, HashMap};

use crate::model::Check;

#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct CheckIndex(HashMap<String, HashMap<String, BTreeSet<String>>>);

impl CheckIndex {
    pub(crate) fn add(&mut self, c: &Check) {
        self.0
            .entry(c.node.clone())
            .or_default()
            .entry(c.service_id.clone())
            .or_default()
            .insert(c.check_id.clone());
    }

    pub(crate) fn remove(&mut self, c: &Check) {
        let Some(node) = self.0.get_mut(&c.node) else {
            return;
        };
        if let Some(ids) = node.get_mut(&c.service_id) {
            ids.remove(&c.check_id);
            if ids.is_empty() {
                node.remove(&c.service_id);
            }
        }
        if node.is_empty() {
            self.0.remove(&c.node);
        }
    }

    /// The IDs of the checks of `service_id` on `node` (`""`: the node's own), in ID order.
    pub(crate) fn ids<'a>(&'a self, node: &str, service_id: &str) -> impl Iterator<Item = &'a str> {
        self.0
            .get(node)
            .and_then(|n| n.get(service_id))
            .into_iter()
            .flatten()
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(node: &str, service: &str, id: &str) -> Check {
        Check {
            node: node.into(),
            service_id: service.into(),
            check_id: id.into(),
            ..Check::default()
        }
    }

    #[test]
    fn checks_are_found_by_instance_and_forgotten_when_removed() {
        let mut ix = CheckIndex::default();
        ix.add(&check("n1", "web", "b"));
        ix.add(&check("n1", "web", "a"));
        ix.add(&check("n1", "", "serfHealth"));
        ix.add(&check("n2", "web", "c"));
        assert_eq!(ix.ids("n1", "web").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(ix.ids("n1", "").collect::<Vec<_>>(), ["serfHealth"]);
        assert_eq!(ix.ids("n3", "web").count(), 0);
        ix.remove(&check("n1", "web", "a"));
        ix.remove(&check("n1", "web", "b"));
        ix.remove(&check("n1", "", "serfHealth"));
        assert_eq!(ix.ids("n1", "web").count(), 0);
        assert_eq!(ix, {
            let mut only = CheckIndex::default();
            only.add(&check("n2", "web", "c"));
            only
        });
    }
}
