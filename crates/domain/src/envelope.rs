use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{DomainEvent, Id};

/// The identity of one recorded event (a time-ordered UUID v7).
pub type EventId = Id<Envelope>;

/// A domain event as it travels: payload plus the metadata delivery needs.
///
/// - `id` is unique and time-ordered; handlers use it as their idempotency key.
/// - `correlation_id` is shared by every event that stems from one original request;
///   `causation_id` is the id of the event whose handler recorded this one.
///
/// ```
/// # mod keel { pub use keel_domain::{DomainEvent, Envelope}; }
/// use keel::{DomainEvent, Envelope};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Started { id: i64 }
/// # impl DomainEvent for Started {
/// #     const NAME: &'static str = "started.v1"; const AGGREGATE_TYPE: &'static str = "Job";
/// #     fn aggregate_id(&self) -> String { self.id.to_string() } }
/// # #[derive(Serialize, Deserialize)] struct Finished { id: i64 }
/// # impl DomainEvent for Finished {
/// #     const NAME: &'static str = "finished.v1"; const AGGREGATE_TYPE: &'static str = "Job";
/// #     fn aggregate_id(&self) -> String { self.id.to_string() } }
/// let first = Envelope::wrap(&Started { id: 1 }).unwrap();
/// let second = Envelope::wrap(&Finished { id: 1 }).unwrap().caused_by(&first);
/// assert_eq!(second.causation_id, Some(first.id));
/// assert_eq!(second.correlation_id, first.correlation_id);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique, time-ordered id of this event.
    pub id: EventId,
    /// The event's stable name ([`DomainEvent::NAME`]).
    pub name: String,
    /// The aggregate type the event happened to.
    pub aggregate_type: String,
    /// The aggregate id the event happened to, as text.
    pub aggregate_id: String,
    /// When the event was recorded (UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// The serialized event.
    pub payload: serde_json::Value,
    /// Shared by all events that stem from one original request.
    pub correlation_id: Uuid,
    /// The event whose handling recorded this one, if any.
    pub causation_id: Option<EventId>,
    /// Context that travels with the message besides its payload, stored with it and
    /// carried across a broker: a W3C trace context (`traceparent`, `tracestate`) or
    /// whatever the application sets with `tx.header(name, value)`. Usually empty.
    /// Names and values follow [`Envelope::header_problem`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Why an [`Envelope`] could not be turned back into a typed event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The envelope holds a different event type than the one asked for.
    #[error("envelope holds event `{found}`, not `{expected}`")]
    WrongEvent {
        /// The name the caller asked for.
        expected: &'static str,
        /// The name found in the envelope.
        found: String,
    },
    /// The payload no longer matches the event's shape (e.g. a field was renamed).
    #[error(
        "payload of event `{name}` does not deserialize: {source}; \
         keep event payloads backward compatible (add optional fields, never rename)"
    )]
    Payload {
        /// The event's name.
        name: String,
        /// The serde error, which names the offending field.
        source: serde_json::Error,
    },
}

impl Envelope {
    /// Wraps an event with a new id, the current time, and a fresh correlation id.
    ///
    /// Fails only if the event's `Serialize` implementation fails (e.g. a map with
    /// non-string keys).
    pub fn wrap<E: DomainEvent>(event: &E) -> Result<Self, serde_json::Error> {
        let id = EventId::new();
        Ok(Envelope {
            id,
            name: E::NAME.to_owned(),
            aggregate_type: E::AGGREGATE_TYPE.to_owned(),
            aggregate_id: event.aggregate_id(),
            occurred_at: OffsetDateTime::now_utc(),
            payload: serde_json::to_value(event)?,
            correlation_id: *id.as_uuid(),
            causation_id: None,
            headers: BTreeMap::new(),
        })
    }

    /// Wraps a command like an event: its name, its key as the aggregate id (empty if
    /// none), aggregate type [`COMMAND`](Envelope::COMMAND).
    pub fn wrap_command<C: crate::Command>(command: &C) -> Result<Self, serde_json::Error> {
        let id = EventId::new();
        Ok(Envelope {
            id,
            name: C::NAME.to_owned(),
            aggregate_type: Self::COMMAND.to_owned(),
            aggregate_id: command.key().unwrap_or_default(),
            occurred_at: OffsetDateTime::now_utc(),
            payload: serde_json::to_value(command)?,
            correlation_id: *id.as_uuid(),
            causation_id: None,
            headers: BTreeMap::new(),
        })
    }

    /// The aggregate type of a wrapped command.
    pub const COMMAND: &'static str = "command";

    /// The ordering key of a wrapped command ([`Command::key`](crate::Command::key)), so
    /// that it survives the trip through another system; `None` for an event or an unkeyed
    /// command.
    pub fn command_key(&self) -> Option<&str> {
        (self.aggregate_type == Self::COMMAND && !self.aggregate_id.is_empty())
            .then_some(self.aggregate_id.as_str())
    }

    /// Why `name: value` cannot be one of an envelope's headers, if it cannot. A name is
    /// printable ASCII without `:` (what message brokers and HTTP accept), and does not
    /// start with `Nats-` or `Keel-`, which belong to the transport (a message id, the
    /// envelope's own fields); a value holds no line break.
    pub fn header_problem(name: &str, value: &str) -> Option<String> {
        let reserved = ["Nats-", "Keel-"].into_iter().find(|p| {
            name.get(..p.len())
                .is_some_and(|n| n.eq_ignore_ascii_case(p))
        });
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            Some(format!(
                "header name `{}` is not printable ASCII without `:`: name it like an HTTP header",
                name.escape_debug()
            ))
        } else if let Some(prefix) = reserved {
            Some(format!(
                "header `{name}` is reserved: names starting with `{prefix}` belong to the \
                 transport; name yours otherwise"
            ))
        } else if value.contains(['\r', '\n']) {
            Some(format!("the value of header `{name}` holds a line break"))
        } else {
            None
        }
    }

    /// Marks this event as caused by `cause`: it joins the cause's correlation and
    /// names the cause as its causation.
    #[must_use]
    pub fn caused_by(mut self, cause: &Envelope) -> Self {
        self.correlation_id = cause.correlation_id;
        self.causation_id = Some(cause.id);
        self
    }

    /// Sets the correlation id, e.g. to a request id received over HTTP.
    #[must_use]
    pub fn correlated_with(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = correlation_id;
        self
    }

    /// Whether this envelope holds an event of type `E`.
    pub fn is<E: DomainEvent>(&self) -> bool {
        self.name == E::NAME
    }

    /// Turns the payload back into the typed event.
    pub fn decode<E: DomainEvent>(&self) -> Result<E, DecodeError> {
        self.decode_named(E::NAME)
    }

    /// Turns the payload back into the typed command.
    pub fn decode_command<C: crate::Command>(&self) -> Result<C, DecodeError> {
        self.decode_named(C::NAME)
    }

    fn decode_named<T: serde::de::DeserializeOwned>(
        &self,
        expected: &'static str,
    ) -> Result<T, DecodeError> {
        if self.name != expected {
            return Err(DecodeError::WrongEvent {
                expected,
                found: self.name.clone(),
            });
        }
        T::deserialize(&self.payload).map_err(|source| DecodeError::Payload {
            name: self.name.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn headers_that_could_not_travel_are_refused_with_the_reason() {
        use super::Envelope;
        let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(Envelope::header_problem("traceparent", trace), None);
        let problem = |name: &str, value: &str| Envelope::header_problem(name, value).unwrap();
        assert!(problem("Nats-Msg-Id", "1").contains("reserved"));
        assert!(problem("keel-name", "x").contains("reserved"));
        assert!(problem("trace:parent", "x").contains("printable ASCII"));
        assert!(problem("", "x").contains("printable ASCII"));
        assert!(problem("x-note", "a\r\nNats-Msg-Id: 1").contains("line break"));
    }

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AssessmentCompleted {
        assessment_id: i64,
        user_id: i64,
        campaign_participation_id: Option<i64>,
    }

    impl DomainEvent for AssessmentCompleted {
        const NAME: &'static str = "assessment.completed.v1";
        const AGGREGATE_TYPE: &'static str = "Assessment";
        fn aggregate_id(&self) -> String {
            self.assessment_id.to_string()
        }
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct BadgeAcquired {
        badge_id: i64,
    }

    impl DomainEvent for BadgeAcquired {
        const NAME: &'static str = "badge.acquired.v1";
        const AGGREGATE_TYPE: &'static str = "Badge";
        fn aggregate_id(&self) -> String {
            self.badge_id.to_string()
        }
    }

    fn completed() -> AssessmentCompleted {
        AssessmentCompleted {
            assessment_id: 12,
            user_id: 3,
            campaign_participation_id: Some(5),
        }
    }

    #[test]
    fn wrap_fills_the_metadata_from_the_event() {
        let e = Envelope::wrap(&completed()).unwrap();
        assert_eq!(e.name, "assessment.completed.v1");
        assert_eq!(e.aggregate_type, "Assessment");
        assert_eq!(e.aggregate_id, "12");
        assert_eq!(e.correlation_id, *e.id.as_uuid());
        assert_eq!(e.causation_id, None);
        assert!((OffsetDateTime::now_utc() - e.occurred_at).whole_seconds() < 5);
    }

    #[test]
    fn decode_round_trips_and_refuses_the_wrong_type() {
        let e = Envelope::wrap(&completed()).unwrap();
        assert_eq!(e.decode::<AssessmentCompleted>().unwrap(), completed());
        let err = e.decode::<BadgeAcquired>().unwrap_err();
        assert!(matches!(err, DecodeError::WrongEvent { .. }));
        assert!(err.to_string().contains("assessment.completed.v1"));
    }

    #[test]
    fn decode_names_the_event_when_the_payload_changed_shape() {
        let mut e = Envelope::wrap(&completed()).unwrap();
        e.payload = serde_json::json!({ "assessment": 12 });
        let err = e.decode::<AssessmentCompleted>().unwrap_err().to_string();
        assert!(err.contains("assessment.completed.v1"), "{err}");
        assert!(err.contains("assessment_id"), "{err}");
    }

    #[test]
    fn causation_chains_keep_the_correlation() {
        let root = Envelope::wrap(&completed()).unwrap();
        let child = Envelope::wrap(&BadgeAcquired { badge_id: 1 })
            .unwrap()
            .caused_by(&root);
        let grandchild = Envelope::wrap(&BadgeAcquired { badge_id: 2 })
            .unwrap()
            .caused_by(&child);
        assert_eq!(grandchild.correlation_id, root.correlation_id);
        assert_eq!(grandchild.causation_id, Some(child.id));
        assert!(root.id < child.id && child.id < grandchild.id);
    }

    #[test]
    fn envelope_serializes_and_back() {
        let e = Envelope::wrap(&completed()).unwrap();
        let json = serde_json::to_string(&e).unwrap();
        let back: Envelope = serde_json::from_str(&json).unwrap();
        assert_eq!(back, e);
    }
}
