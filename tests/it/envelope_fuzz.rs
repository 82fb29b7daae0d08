//! Property tests of push decoding: any body is either a valid trigger or a 4xx refusal,
//! never a panic, and a refused push writes nothing. Bounded so the suite stays fast: 256
//! bodies decoded (`PROPTEST_CASES` raises it), 96 pushed through the worker.

use crate::common;

use base64::Engine;
use common::{TestEnv, d};
use phasegate::dates::YEARS;
use phasegate::envelope::PushEnvelope;
use proptest::prelude::*;
use serde_json::{Value, json};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Strings that look like dates, almost-dates, and anything at all.
fn date_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (1850..2250i32, 0..14u32, 0..33u32).prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}")),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}",
        "[-+ 0-9]{1,6}-[ 0-9]{1,2}-[ 0-9]{1,2}",
        "[-+0-9 /T:.]{0,14}",
        any::<String>(),
    ]
}

/// A JSON value of any shape, a little nested.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        date_text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Payloads: objects with a data_date of any shape, or any JSON value at all.
fn payload() -> impl Strategy<Value = Value> {
    prop_oneof![
        (json_value(), prop::option::of("[a-z]{1,8}")).prop_map(|(date, phase)| {
            let mut p = json!({ "data_date": date });
            if let Some(phase) = phase {
                p["phase"] = json!(phase);
            }
            p
        }),
        date_text().prop_map(|date| json!({ "data_date": date })),
        json_value(),
    ]
}

/// Push bodies: well-formed envelopes around any payload, mangled envelopes, raw bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let message_id = prop_oneof![3 => "[a-z0-9]{1,8}".prop_map(Value::from), 1 => json_value()];
    let envelope = (payload(), message_id, prop::option::of(date_text())).prop_map(
        |(payload, message_id, attr_date)| {
            let mut attributes = serde_json::Map::new();
            if let Some(a) = attr_date {
                attributes.insert("data_date".into(), json!(a));
            }
            json!({
                "message": {
                    "data": b64(payload.to_string().as_bytes()),
                    "messageId": message_id,
                    "attributes": attributes,
                },
                "subscription": "s",
            })
            .to_string()
            .into_bytes()
        },
    );
    let mangled = (json_value(), json_value()).prop_map(|(message, extra)| {
        json!({ "message": message, "deliveryAttempt": extra })
            .to_string()
            .into_bytes()
    });
    let near_valid =
        (1850..2250i32, 0..14u32, 0..33u32, "[a-z0-9]{1,8}").prop_map(|(y, m, d, id)| {
            let payload = json!({ "data_date": format!("{y:04}-{m:02}-{d:02}") });
            json!({ "message": { "data": b64(payload.to_string().as_bytes()), "messageId": id } })
                .to_string()
                .into_bytes()
        });
    prop_oneof![
        3 => near_valid,
        4 => envelope,
        2 => mangled,
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

/// What a decoded trigger must satisfy.
fn assert_valid_trigger(body: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(t) = PushEnvelope::from_json(body).and_then(PushEnvelope::decode) {
        use chrono::Datelike;
        prop_assert!(YEARS.contains(&t.data_date.year()));
        prop_assert!(!t.message_id.trim().is_empty());
        let text = t.data_date.format("%Y-%m-%d").to_string();
        prop_assert!(
            String::from_utf8_lossy(body).contains(&text) || body_has_b64_date(body, &text)
        );
    }
    Ok(())
}

/// The date is inside the base64 payload or the attributes.
fn body_has_b64_date(body: &[u8], date: &str) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let data = v["message"]["data"].as_str().unwrap_or_default();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap_or_default();
    String::from_utf8_lossy(&decoded).contains(date)
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn decoding_any_body_never_panics_and_yields_only_valid_triggers(body in body()) {
        assert_valid_trigger(&body)?;
    }
}

fn ledger_rows(env: &TestEnv) -> i64 {
    let c = rusqlite::Connection::open(env.db_path()).unwrap();
    c.query_row("SELECT COUNT(*) FROM processor_run_history", [], |r| {
        r.get(0)
    })
    .unwrap()
}

#[test]
fn any_refused_push_writes_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let env = rt.block_on(async {
        let env = TestEnv::new("strict").await;
        env.season(&[d("2024-01-01")]).await;
        env
    });
    let config = ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let valid = std::cell::Cell::new(0u32);
    proptest!(config, |(body in body())| {
        let before = ledger_rows(&env);
        let outcome = rt.block_on(async {
            let outcome = env.app.worker.handle_push("raw", &body).await;
            // A valid trigger's cascade runs on the in-process bus: let it finish first.
            if let Some(bus) = &env.app.bus {
                bus.wait_idle().await;
            }
            outcome
        });
        let status = outcome.http_status();
        let decoded = PushEnvelope::from_json(&body).and_then(PushEnvelope::decode);
        if decoded.is_ok() {
            valid.set(valid.get() + 1);
        } else {
            prop_assert!((400..500).contains(&status), "refusal {status}: {}", outcome.body());
            prop_assert_eq!(ledger_rows(&env), before, "a refused push wrote to the ledger");
        }
        if status == 400 {
            prop_assert_eq!(ledger_rows(&env), before, "a 400 push wrote to the ledger");
        }
    });
    assert!(
        valid.get() > 0,
        "the generator produced no valid trigger: the property was vacuous"
    );
}
