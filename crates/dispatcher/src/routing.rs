//! The routing table a dispatcher installs on its database handle.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use keel_orchestrator::Backend;
use keel_orchestrator::outbox::Routing;

use crate::Registry;
use crate::wake::Wake;

/// Handler names per event name, computed once from the registry.
pub(crate) struct RoutingTable {
    names: HashMap<&'static str, Vec<&'static str>>,
    fast_path_lease: Option<Duration>,
    relay: Arc<Wake>,
}

impl RoutingTable {
    pub(crate) fn new<B: Backend>(
        registry: &Registry<B>,
        fast_path_lease: Option<Duration>,
        relay: Arc<Wake>,
    ) -> Self {
        let mut names: HashMap<&'static str, Vec<&'static str>> = HashMap::new();
        for handler in registry.handlers() {
            names
                .entry(handler.event())
                .or_default()
                .push(handler.name());
        }
        RoutingTable {
            names,
            fast_path_lease,
            relay,
        }
    }
}

impl Routing for RoutingTable {
    fn handlers_for(&self, event: &str) -> &[&'static str] {
        self.names.get(event).map(Vec::as_slice).unwrap_or(&[])
    }

    fn fast_path_lease(&self) -> Option<Duration> {
        self.fast_path_lease
    }

    fn left_for_relay(&self) {
        self.relay.wake();
    }
}
