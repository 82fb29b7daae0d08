//! The Pub/Sub push envelope, and the trigger it carries once decoded and checked.
//!
//! Everything here is input from the network: every failure is a [`BadMessage`] with a
//! reason a person can act on, never a panic.

use std::collections::BTreeMap;

use base64::Engine;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::dates::parse_date;

/// The attribute that stops the cascade: present (whatever its value) means "do not publish".
pub const SKIP_DOWNSTREAM_TRIGGER: &str = "skip_downstream_trigger";
/// Attribute that asks to re-run a date that already succeeded.
pub const FORCE: &str = "force";

/// The push request body Pub/Sub sends.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PushEnvelope {
    #[serde(deserialize_with = "object_only")]
    pub message: PushMessage,
    #[serde(default)]
    pub subscription: String,
    #[serde(
        default,
        rename = "deliveryAttempt",
        skip_serializing_if = "Option::is_none"
    )]
    pub delivery_attempt: Option<u32>,
}

/// Pub/Sub sends both spellings (`messageId` and `message_id`, `publishTime` and
/// `publish_time`): the camelCase one wins, `message_id` is the fallback.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PushMessage {
    /// Base64 of the payload.
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(rename = "messageId", default)]
    pub message_id: String,
    #[serde(rename = "message_id", default, skip_serializing)]
    message_id_snake: Option<String>,
    #[serde(
        default,
        rename = "publishTime",
        skip_serializing_if = "Option::is_none"
    )]
    pub publish_time: Option<String>,
}

/// The JSON payload a phase accepts: a trigger or the previous phase's completion event.
/// Only a JSON object is a payload; `data_date` and `phase`, when present, are strings.
#[derive(Debug, Clone, Deserialize)]
pub struct Payload {
    #[serde(default)]
    pub data_date: Option<String>,
    /// Set on completion events: the phase that completed.
    #[serde(default)]
    pub phase: Option<String>,
}

impl Payload {
    /// Parse decoded `message.data`: a JSON object, nothing else.
    pub fn from_json(bytes: &[u8]) -> Result<Payload, BadMessage> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        object_only(&mut de)
            .and_then(|payload| de.end().map(|()| payload))
            .map_err(|e| BadMessage::Payload(e.to_string()))
    }
}

/// Deserialize a struct from a JSON object only: serde's derive also accepts a JSON array
/// (fields by position), which no Pub/Sub sender produces. Straight from the parser, with
/// no `serde_json::Value` built in between.
fn object_only<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct ObjectOnly<T>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectOnly<T> {
        type Value = T;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }

    deserializer.deserialize_map(ObjectOnly(std::marker::PhantomData))
}

/// Why a push was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadMessage {
    #[error("body is not a push envelope: {0}")]
    Envelope(String),
    #[error("message.messageId is empty")]
    NoMessageId,
    #[error("message.data is missing: the payload must carry a data_date")]
    NoData,
    #[error("message.data is not valid base64: {0}")]
    Base64(String),
    #[error("message.data is not a JSON object with string fields: {0}")]
    Payload(String),
    #[error("data_date is missing from the payload and the attributes")]
    NoDate,
    #[error("data_date: {0}")]
    Date(#[from] crate::dates::BadDate),
    #[error("payload data_date {payload} and attribute data_date {attribute} disagree")]
    DateMismatch { payload: String, attribute: String },
    #[error("no data_date, and [trigger] cannot derive one: {0}")]
    TriggerDate(#[from] crate::trigger::TriggerDateError),
}

/// A decoded, validated trigger for one phase and one date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    pub data_date: NaiveDate,
    pub message_id: String,
    pub attributes: BTreeMap<String, String>,
    /// The phase named in the payload (a completion event), if any.
    pub from_phase: Option<String>,
    pub delivery_attempt: Option<u32>,
}

impl Trigger {
    /// The cascade rule: presence of the attribute means skip, whatever its value.
    pub fn skip_downstream(&self) -> bool {
        self.attributes.contains_key(SKIP_DOWNSTREAM_TRIGGER)
    }

    pub fn force(&self) -> bool {
        self.attributes
            .get(FORCE)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

impl PushEnvelope {
    /// Parse a request body: a JSON object whose `message` is a JSON object.
    pub fn from_json(body: &[u8]) -> Result<PushEnvelope, BadMessage> {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(BadMessage::Envelope("expected a JSON object".into()));
        }
        serde_json::from_slice(body).map_err(|e| BadMessage::Envelope(e.to_string()))
    }

    /// Build an envelope around a JSON payload (as the in-process bus and tests do).
    pub fn wrap(
        payload: &serde_json::Value,
        attributes: BTreeMap<String, String>,
        message_id: String,
        subscription: String,
    ) -> PushEnvelope {
        let data = base64::engine::general_purpose::STANDARD.encode(payload.to_string());
        PushEnvelope {
            message: PushMessage {
                data: Some(data),
                attributes,
                message_id,
                message_id_snake: None,
                publish_time: Some(chrono::Utc::now().to_rfc3339()),
            },
            subscription,
            delivery_attempt: None,
        }
    }

    /// Decode the payload and check it carries a valid date.
    pub fn decode(self) -> Result<Trigger, BadMessage> {
        self.decode_with(None)
    }

    /// As [`decode`](Self::decode); with `[trigger]` configured, a message without a
    /// `data_date` takes it from `publishTime` (see [`crate::trigger`]).
    pub fn decode_with(
        self,
        scheduled: Option<&crate::config::TriggerConfig>,
    ) -> Result<Trigger, BadMessage> {
        let mut msg = self.message;
        if msg.message_id.trim().is_empty() {
            msg.message_id = msg.message_id_snake.take().unwrap_or_default();
        }
        if msg.message_id.trim().is_empty() {
            return Err(BadMessage::NoMessageId);
        }
        let data = msg.data.ok_or(BadMessage::NoData)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.as_bytes())
            .map_err(|e| BadMessage::Base64(e.to_string()))?;
        let payload = Payload::from_json(&bytes)?;
        let attr_date = msg.attributes.get("data_date").cloned();
        let date_text = match (payload.data_date, attr_date) {
            (Some(p), Some(a)) if p != a => {
                return Err(BadMessage::DateMismatch {
                    payload: p,
                    attribute: a,
                });
            }
            (Some(p), _) => p,
            (None, Some(a)) => a,
            (None, None) => match scheduled {
                Some(t) => crate::trigger::resolve(t, msg.publish_time.as_deref())?.to_string(),
                None => return Err(BadMessage::NoDate),
            },
        };
        let data_date = parse_date(&date_text)?;
        Ok(Trigger {
            data_date,
            message_id: msg.message_id,
            attributes: msg.attributes,
            from_phase: payload.phase,
            delivery_attempt: self.delivery_attempt,
        })
    }
}

/// A trigger without `data_date` in its payload or attributes. The one place a rule for
/// date-less triggers (e.g. Cloud Scheduler's, dated by `publishTime`) belongs.
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(payload: serde_json::Value, attrs: &[(&str, &str)]) -> PushEnvelope {
        let attributes = attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PushEnvelope::wrap(&payload, attributes, "m-1".into(), "sub".into())
    }

    #[test]
    fn skip_attribute_presence_means_skip_whatever_its_value() {
        for v in ["true", "false", ""] {
            let t = envelope(
                json!({"data_date": "2024-01-02"}),
                &[(SKIP_DOWNSTREAM_TRIGGER, v)],
            )
            .decode()
            .unwrap();
            assert!(t.skip_downstream(), "value {v:?}");
        }
        let t = envelope(json!({"data_date": "2024-01-02"}), &[])
            .decode()
            .unwrap();
        assert!(!t.skip_downstream());
    }

    #[test]
    fn the_emulators_body_with_both_spellings_decodes() {
        let body = br#"{"subscription":"projects/p/subscriptions/s","message":{"data":"eyJkYXRhX2RhdGUiOiIyMDI0LTAxLTAyIn0=","attributes":{"a":"b"},"messageId":"7","message_id":"7","publishTime":"2024-01-02T00:00:00Z","publish_time":"2024-01-02T00:00:00Z"}}"#;
        let t = PushEnvelope::from_json(body).unwrap().decode().unwrap();
        assert_eq!(t.message_id, "7");
        assert_eq!(t.data_date.to_string(), "2024-01-02");
        let snake_only =
            br#"{"message":{"data":"eyJkYXRhX2RhdGUiOiIyMDI0LTAxLTAyIn0=","message_id":"8"}}"#;
        let t = PushEnvelope::from_json(snake_only)
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(t.message_id, "8");
    }

    #[test]
    fn date_may_come_from_attributes_but_must_agree() {
        let t = envelope(json!({}), &[("data_date", "2024-01-02")])
            .decode()
            .unwrap();
        assert_eq!(t.data_date.to_string(), "2024-01-02");
        let e = envelope(
            json!({"data_date": "2024-01-03"}),
            &[("data_date", "2024-01-02")],
        )
        .decode()
        .unwrap_err();
        assert!(matches!(e, BadMessage::DateMismatch { .. }));
    }
}

#[cfg(test)]
mod strict_tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn decode(body: &str) -> Result<Trigger, BadMessage> {
        PushEnvelope::from_json(body.as_bytes()).and_then(PushEnvelope::decode)
    }

    #[test]
    fn arrays_are_not_objects() {
        let data = b64(r#"{"data_date":"2025-10-22"}"#);
        let cases = [
            format!(r#"[{{"data":"{data}","messageId":"1"}}, "s"]"#),
            format!(r#"{{"message":["{data}", {{}}, "1"]}}"#),
            format!(
                r#"{{"message":{{"data":"{}","messageId":"1"}}}}"#,
                b64(r#"["2025-10-22"]"#)
            ),
            format!(
                r#"{{"message":{{"data":"{}","messageId":"1"}}}}"#,
                b64(r#"{"data_date":20251022}"#)
            ),
            r#""just a string""#.to_string(),
        ];
        for body in cases {
            assert!(decode(&body).is_err(), "{body}");
        }
        let ok = format!(r#" {{"message":{{"data":"{data}","messageId":"1"}}}}"#);
        assert_eq!(decode(&ok).unwrap().data_date.to_string(), "2025-10-22");
    }
}
