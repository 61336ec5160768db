//! Handlers registered where they are defined are found; duplicates are refused.

use keel::{Error, Handler, HandlerContext, Registry, RegistryError};

use crate::support::{InvoiceIssued, OrderPlaced};

mod defined_in_a_module_nothing_references {
    use keel::{Error, HandlerContext};

    use crate::support::InvoiceIssued;

    async fn archive_invoice(_: &InvoiceIssued, _: &mut HandlerContext) -> Result<(), Error> {
        Ok(())
    }

    keel::register_handler!(InvoiceIssued => archive_invoice);
}

async fn audit_order(_: &OrderPlaced, _: &mut HandlerContext) -> Result<(), Error> {
    Ok(())
}

keel::register_handler!(OrderPlaced => audit_order, retry = keel::RetryPolicy::never());

#[test]
fn the_global_registry_finds_handlers_defined_in_test_modules() {
    let registry = Registry::global().unwrap();
    let names: Vec<(&str, &str)> = registry.handlers().map(|h| (h.event(), h.name())).collect();
    assert!(
        names.contains(&(
            "test.invoice_issued.v1",
            "events::registry::defined_in_a_module_nothing_references::archive_invoice"
        )),
        "{names:?}"
    );
    let audit = registry
        .handlers_for("test.order_placed.v1")
        .iter()
        .find(|h| h.name() == "events::registry::audit_order")
        .expect("audit_order registered");
    assert_eq!(audit.retry_policy().attempts(), 1);
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
    // The same name on another event is a different handler.
    async fn audit_invoice(_: &InvoiceIssued, _: &mut HandlerContext) -> Result<(), Error> {
        Ok(())
    }
    registry
        .register(Handler::new::<InvoiceIssued, _>("audit", audit_invoice))
        .unwrap();
    assert_eq!(registry.len(), 2);
}
