//! How an envelope travels: its payload as the message body (plain JSON, readable by any
//! consumer) and everything else in headers, `Nats-Msg-Id` being the event id. The
//! envelope's own headers ([`Envelope::headers`], a trace context) travel as they are:
//! every header not named `Nats-…` or `Keel-…` is one of them.
//!
//! Subjects ([`Subjects`]): `<prefix>.<message name>` for events and most commands, so a
//! consumer reads one message type by filtering on its subject; a command whose key's
//! commands run in order ([`Command::ORDERED`](keel_domain::Command::ORDERED)) goes to
//! `<prefix>.<command name>.<partition>`, the partition a hash of its key, so that one
//! consumer per partition can keep each key's commands in order. The stream captures
//! `<prefix>.>`.

pub use bytes::Bytes;
use keel_domain::{Envelope, EventId};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// The header JetStream deduplicates publishes by, within the stream's duplicate window.
pub const MESSAGE_ID: &str = "Nats-Msg-Id";
/// The message (event or command) name.
pub const NAME: &str = "Keel-Name";
/// The aggregate type.
pub const AGGREGATE_TYPE: &str = "Keel-Aggregate-Type";
/// The aggregate id.
pub const AGGREGATE_ID: &str = "Keel-Aggregate-Id";
/// When the event occurred, RFC 3339.
pub const OCCURRED_AT: &str = "Keel-Occurred-At";
/// The correlation id (shared by everything one request caused).
pub const CORRELATION_ID: &str = "Keel-Correlation-Id";
/// The causation id (the event that caused this one), when there is one.
pub const CAUSATION_ID: &str = "Keel-Causation-Id";

/// A message as a transport sends and receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireMessage {
    /// Where it is published.
    pub subject: String,
    /// Its headers, in order.
    pub headers: Vec<(String, String)>,
    /// The payload, JSON.
    pub body: Bytes,
}

impl WireMessage {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How messages map to subjects, shared by everything that publishes or consumes on one
/// stream ([`StreamOptions`](crate::StreamOptions) sets it up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
    partitions: u32,
}

impl Subjects {
    /// Subjects under `prefix`, keyed commands spread over `partitions` (at least 1).
    pub fn new(prefix: impl Into<String>, partitions: u32) -> Self {
        Subjects {
            prefix: prefix.into(),
            partitions: partitions.max(1),
        }
    }

    /// The first token of every subject.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many partitions keyed commands are spread over.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// What the stream captures: `<prefix>.>`.
    pub fn all(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// The subject of the events named `name`, and of the commands whose order is not
    /// kept: `<prefix>.<name>`; or why it cannot be one.
    pub fn message(&self, name: &str) -> Result<String, String> {
        let subject = format!("{}.{name}", self.prefix);
        let valid = subject
            .split('.')
            .all(|token| !token.is_empty() && !token.contains(['*', '>', ' ', '\t', '\r', '\n']));
        if valid {
            Ok(subject)
        } else {
            Err(format!(
                "`{subject}` is not a valid NATS subject (empty token, wildcard or whitespace): \
                 name the message or the prefix with dot-separated words"
            ))
        }
    }

    /// The subject of partition `partition` of the keyed commands named `name`:
    /// `<prefix>.<name>.<partition>`.
    pub fn partition(&self, name: &str, partition: u32) -> Result<String, String> {
        Ok(format!("{}.{partition}", self.message(name)?))
    }

    /// The subject of a wrapped command: its key's partition when its key's commands run
    /// in order (`ordered`, [`Command::ORDERED`](keel_domain::Command::ORDERED)), the
    /// command's subject otherwise.
    pub fn command(&self, envelope: &Envelope, ordered: bool) -> Result<String, String> {
        match envelope.command_key().filter(|_| ordered) {
            Some(key) => self.partition(&envelope.name, partition_of(key, self.partitions)),
            None => self.message(&envelope.name),
        }
    }
}

/// The partition of `key` among `partitions`: 64-bit FNV-1a of its UTF-8 bytes, modulo
/// the count. Stable across processes, versions and languages.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

/// The wire form of `envelope`, published to `subject` (from [`Subjects`]).
pub fn encode(subject: String, envelope: &Envelope) -> Result<WireMessage, String> {
    let occurred = envelope
        .occurred_at
        .format(&Rfc3339)
        .map_err(|e| format!("the event's time cannot be written: {e}"))?;
    let mut headers = vec![
        (MESSAGE_ID.to_owned(), envelope.id.to_string()),
        (NAME.to_owned(), envelope.name.clone()),
        (AGGREGATE_TYPE.to_owned(), envelope.aggregate_type.clone()),
        (AGGREGATE_ID.to_owned(), envelope.aggregate_id.clone()),
        (OCCURRED_AT.to_owned(), occurred),
        (
            CORRELATION_ID.to_owned(),
            envelope.correlation_id.to_string(),
        ),
    ];
    if let Some(causation) = envelope.causation_id {
        headers.push((CAUSATION_ID.to_owned(), causation.to_string()));
    }
    for (name, value) in &envelope.headers {
        // Never the transport's own headers, nor a line a broker would refuse.
        if let Some(problem) = Envelope::header_problem(name, value) {
            return Err(problem);
        }
        headers.push((name.clone(), value.clone()));
    }
    Ok(WireMessage {
        subject,
        headers,
        body: Bytes::from(envelope.payload.to_string()),
    })
}

/// The envelope a wire message carries, or why it carries none (a message published by
/// something else than a Keel forwarder, or damaged).
pub fn decode(message: &WireMessage) -> Result<Envelope, String> {
    let required = |name: &str| {
        message
            .header(name)
            .ok_or_else(|| format!("header `{name}` is missing"))
    };
    let uuid = |name: &str| -> Result<Uuid, String> {
        let text = required(name)?;
        text.parse()
            .map_err(|_| format!("header `{name}` is not a UUID: `{text}`"))
    };
    let occurred = required(OCCURRED_AT)?;
    let payload =
        serde_json::from_slice(&message.body).map_err(|e| format!("the body is not JSON: {e}"))?;
    Ok(Envelope {
        id: EventId::from_uuid(uuid(MESSAGE_ID)?),
        name: required(NAME)?.to_owned(),
        aggregate_type: required(AGGREGATE_TYPE)?.to_owned(),
        aggregate_id: required(AGGREGATE_ID)?.to_owned(),
        occurred_at: OffsetDateTime::parse(occurred, &Rfc3339)
            .map_err(|_| format!("header `{OCCURRED_AT}` is not an RFC 3339 time: `{occurred}`"))?,
        payload,
        correlation_id: uuid(CORRELATION_ID)?,
        causation_id: match message.header(CAUSATION_ID) {
            Some(_) => Some(EventId::from_uuid(uuid(CAUSATION_ID)?)),
            None => None,
        },
        headers: message
            .headers
            .iter()
            .filter(|(name, value)| Envelope::header_problem(name, value).is_none())
            .cloned()
            .collect(),
    })
}

/// An envelope standing for a message that does not decode, so that it can wait in the
/// dead letter with its reason: its id is the message id when that is a UUID (a redelivery
/// then changes nothing), its name the subject without the prefix, its payload the body.
pub fn stand_in(subjects: &Subjects, message: &WireMessage) -> Envelope {
    let id = message
        .header(MESSAGE_ID)
        .and_then(|id| id.parse::<Uuid>().ok())
        .unwrap_or_else(Uuid::now_v7);
    let name = message
        .subject
        .strip_prefix(subjects.prefix())
        .and_then(|s| s.strip_prefix('.'))
        .unwrap_or(&message.subject)
        .to_owned();
    let payload = serde_json::from_slice(&message.body).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&message.body).into_owned())
    });
    Envelope {
        id: EventId::from_uuid(id),
        name,
        aggregate_type: String::new(),
        aggregate_id: String::new(),
        occurred_at: OffsetDateTime::now_utc(),
        payload,
        correlation_id: id,
        causation_id: None,
        headers: std::collections::BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            id: EventId::from_uuid(Uuid::now_v7()),
            name: "order.placed.v1".to_owned(),
            aggregate_type: "Order".to_owned(),
            aggregate_id: "7".to_owned(),
            occurred_at: OffsetDateTime::parse("2026-12-02T10:00:00.123456Z", &Rfc3339).unwrap(),
            payload: serde_json::json!({"order_id": 7}),
            correlation_id: Uuid::now_v7(),
            causation_id: Some(EventId::from_uuid(Uuid::now_v7())),
            headers: [(
                "traceparent".to_owned(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            )]
            .into(),
        }
    }

    #[test]
    fn an_envelope_survives_the_wire() {
        let sent = envelope();
        let wire = encode(
            Subjects::new("keel", 16).message(&sent.name).unwrap(),
            &sent,
        )
        .unwrap();
        assert_eq!(wire.subject, "keel.order.placed.v1");
        assert_eq!(
            wire.header("nats-msg-id"),
            Some(sent.id.to_string().as_str())
        );
        let received = decode(&wire).unwrap();
        assert_eq!(received.id, sent.id);
        assert_eq!(received.name, sent.name);
        assert_eq!(received.occurred_at, sent.occurred_at);
        assert_eq!(received.payload, sent.payload);
        assert_eq!(received.correlation_id, sent.correlation_id);
        assert_eq!(received.causation_id, sent.causation_id);
        assert_eq!(received.headers, sent.headers);
        let mut forged = sent.clone();
        forged
            .headers
            .insert("nats-msg-id".to_owned(), "1".to_owned());
        let refused = encode(wire.subject.clone(), &forged).unwrap_err();
        assert!(refused.contains("reserved"), "{refused}");
        assert_eq!(
            wire.header("traceparent"),
            sent.headers.get("traceparent").map(String::as_str)
        );
    }

    #[test]
    fn a_foreign_message_is_refused_with_its_reason_and_stands_in_for_the_dead_letter() {
        let wire = WireMessage {
            subject: "keel.order.placed.v1".to_owned(),
            headers: vec![(MESSAGE_ID.to_owned(), "not-a-uuid".to_owned())],
            body: Bytes::from_static(b"plain text"),
        };
        let error = decode(&wire).unwrap_err();
        assert!(error.contains("is missing"), "{error}");
        let stand_in = stand_in(&Subjects::new("keel", 16), &wire);
        assert_eq!(stand_in.name, "order.placed.v1");
        assert_eq!(stand_in.payload, serde_json::json!("plain text"));
    }

    #[test]
    fn subjects_refuse_wildcards_and_empty_tokens() {
        let subjects = Subjects::new("keel", 16);
        assert!(subjects.message("order.placed.v1").is_ok());
        assert!(subjects.message("order.*").is_err());
        assert!(subjects.message("order..placed").is_err());
        assert!(Subjects::new("", 16).message("order").is_err());
    }

    #[test]
    fn an_ordered_command_goes_to_its_keys_partition_and_keeps_its_key() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Like {
            post: i64,
        }
        impl keel_domain::Command for Like {
            const NAME: &'static str = "post.like.v1";
            fn key(&self) -> Option<String> {
                Some(format!("post:{}", self.post))
            }
        }
        let subjects = Subjects::new("keel", 16);
        let sent = Envelope::wrap_command(&Like { post: 7 }).unwrap();
        let subject = subjects.command(&sent, true).unwrap();
        let partition = partition_of("post:7", 16);
        assert_eq!(subject, format!("keel.post.like.v1.{partition}"));
        assert_eq!(subjects.command(&sent, false).unwrap(), "keel.post.like.v1");
        let wire = encode(subject, &sent).unwrap();
        assert_eq!(decode(&wire).unwrap().command_key(), Some("post:7"));
        // FNV-1a 64 of the empty string and of "a", as published for the algorithm.
        assert_eq!(
            partition_of("", 1 << 31),
            (0xcbf2_9ce4_8422_2325_u64 % (1 << 31)) as u32
        );
        assert_eq!(
            partition_of("a", 1 << 31),
            (0xaf63_dc4c_8601_ec8c_u64 % (1 << 31)) as u32
        );
        let spread: std::collections::BTreeSet<u32> = (0..1_000)
            .map(|n| partition_of(&format!("post:{n}"), 16))
            .collect();
        assert_eq!(spread.len(), 16, "keys spread over every partition");
    }
}
