//! Handlers registered where they are defined are found; duplicates and shared names are
//! refused.
//!
//! This file is compiled once per backend: each copy registers its own backend's handlers,
//! named by their path (`integration::events::postgres::registry::…`, and `sqlite` likewise),
//! and `Registry::<B>::global()` finds those of backend `B` only.

use keel::{Error, RegistryError};

use super::support::{InvoiceIssued, OrderPlaced};
use super::{B, Handler, HandlerContext, POSTGRES, Registry};

mod defined_in_a_module_nothing_references {
    use keel::Error;

    use super::super::HandlerContext;
    use super::super::support::InvoiceIssued;

    async fn archive_invoice(_: &InvoiceIssued, _: &mut HandlerContext) -> Result<(), Error> {
        Ok(())
    }

    keel::register_handler!(InvoiceIssued => archive_invoice);
}

async fn audit_order(_: &OrderPlaced, _: &mut HandlerContext) -> Result<(), Error> {
    Ok(())
}

keel::register_handler!(OrderPlaced => audit_order, retry = keel::RetryPolicy::never());

/// The module of this copy of the file, and of the other backend's copy.
const fn modules() -> (&'static str, &'static str) {
    if POSTGRES {
        (
            "integration::events::postgres::registry",
            "integration::events::sqlite::registry",
        )
    } else {
        (
            "integration::events::sqlite::registry",
            "integration::events::postgres::registry",
        )
    }
}

#[test]
fn the_global_registry_finds_handlers_defined_in_test_modules() {
    let (here, other_backend) = modules();
    let registry = keel::Registry::<B>::global().unwrap();
    let names: Vec<(&str, &str)> = registry.handlers().map(|h| (h.event(), h.name())).collect();
    let archive_invoice =
        format!("{here}::defined_in_a_module_nothing_references::archive_invoice");
    assert!(
        names.contains(&("test.invoice_issued.v1", archive_invoice.as_str())),
        "{names:?}"
    );
    let audit_order = format!("{here}::audit_order");
    let audit = registry
        .handlers_for("test.order_placed.v1")
        .iter()
        .find(|h| h.name() == audit_order)
        .expect("audit_order registered");
    assert_eq!(audit.retry_policy().attempts(), 1);
    // The other backend's copies of these handlers are registered too, but not for `B`.
    assert!(
        names
            .iter()
            .all(|(_, name)| !name.starts_with(&format!("{other_backend}::"))),
        "{names:?}"
    );
}

#[test]
fn registering_a_handler_twice_for_one_event_is_refused() {
    let mut registry = Registry::new();
    registry
        .register(Handler::new::<OrderPlaced, _>("audit", audit_order))
        .unwrap();
    let err = registry
        .register(Handler::new::<OrderPlaced, _>("audit", audit_order))
        .unwrap_err();
    assert!(matches!(
        err,
        RegistryError::Duplicate {
            handler: "audit",
            event: "test.order_placed.v1"
        }
    ));
    assert!(err.to_string().contains("registered twice"), "{err}");
}

/// A name identifies a handler's deliveries, policy and batch size: one name, one handler
/// of one message, or which policy applies would depend on the process.
#[test]
fn one_name_for_handlers_of_two_events_is_refused() {
    async fn audit_invoice(_: &InvoiceIssued, _: &mut HandlerContext) -> Result<(), Error> {
        Ok(())
    }
    let mut registry = Registry::new();
    registry
        .register(Handler::new::<OrderPlaced, _>("audit", audit_order))
        .unwrap();
    let err = registry
        .register(
            Handler::new::<InvoiceIssued, _>("audit", audit_invoice)
                .retry(keel::RetryPolicy::never()),
        )
        .unwrap_err();
    assert!(matches!(
        err,
        RegistryError::NameTaken {
            handler: "audit",
            existing: "test.order_placed.v1",
            message: "test.invoice_issued.v1"
        }
    ));
    assert!(err.to_string().contains("name them apart"), "{err}");
    registry
        .register(Handler::new::<InvoiceIssued, _>(
            "audit_invoice",
            audit_invoice,
        ))
        .unwrap();
    assert_eq!(registry.len(), 2);
}
