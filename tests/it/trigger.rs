//! Scheduled triggers: a trigger without `data_date` takes the date of its `publishTime` in
//! `[trigger] timezone`, plus `offset_days` — across daylight-saving changes and UTC day
//! boundaries; without `[trigger]` a missing date is still refused.

use std::path::Path;

use phasegate::config::{Config, TriggerConfig};
use phasegate::envelope::{BadMessage, PushEnvelope};
use phasegate::trigger::{TriggerDateError, resolve};

fn new_york_yesterday() -> TriggerConfig {
    TriggerConfig {
        timezone: "America/New_York".into(),
        offset_days: -1,
    }
}

fn date_for(publish_time: &str) -> String {
    resolve(&new_york_yesterday(), Some(publish_time))
        .expect("resolves")
        .to_string()
}

#[test]
fn a_daily_06_00_new_york_job_means_yesterday_on_both_sides_of_spring_forward() {
    // 06:00 EST is 11:00Z; on 2024-03-10 clocks jump to EDT, so 06:00 is 10:00Z.
    assert_eq!(date_for("2024-03-09T11:00:00Z"), "2024-03-08");
    assert_eq!(date_for("2024-03-10T10:00:00Z"), "2024-03-09");
    assert_eq!(date_for("2024-03-11T10:00:00.123456Z"), "2024-03-10");
}

#[test]
fn the_hour_after_midnight_on_fall_back_day_is_already_the_new_day() {
    // 2024-11-03 00:30 EDT = 04:30Z: still daylight time, so the local date is the 3rd
    // (a fixed UTC-5 offset would say 23:30 on the 2nd).
    assert_eq!(date_for("2024-11-03T04:30:00Z"), "2024-11-02");
    // 01:30 happens twice that night; both are on the 3rd.
    assert_eq!(date_for("2024-11-03T05:30:00Z"), "2024-11-02");
    assert_eq!(date_for("2024-11-03T06:30:00Z"), "2024-11-02");
}

#[test]
fn an_evening_job_is_dated_by_new_york_not_by_utc() {
    // 21:30 in New York on the 10th is 01:30Z on the 11th.
    assert_eq!(date_for("2024-03-11T01:30:00Z"), "2024-03-09");
    // An offset in the timestamp itself is honoured.
    assert_eq!(date_for("2024-03-10T21:30:00-04:00"), "2024-03-09");
    // Same instant in UTC with offset 0: the UTC date would be a day later.
    let utc = TriggerConfig {
        timezone: "UTC".into(),
        offset_days: 0,
    };
    assert_eq!(
        resolve(&utc, Some("2024-03-11T01:30:00Z"))
            .unwrap()
            .to_string(),
        "2024-03-11"
    );
}

#[test]
fn a_missing_or_garbled_publish_time_is_a_clear_refusal() {
    let t = new_york_yesterday();
    assert_eq!(resolve(&t, None), Err(TriggerDateError::NoPublishTime));
    assert!(matches!(
        resolve(&t, Some("yesterday")),
        Err(TriggerDateError::BadPublishTime(_))
    ));
}

fn scheduler_envelope(publish_time: &str) -> PushEnvelope {
    // What Cloud Scheduler's Pub/Sub target sends with `--message-body='{}'`.
    let body = format!(
        r#"{{"message":{{"data":"e30=","messageId":"s-1","publishTime":"{publish_time}"}},"subscription":"projects/p/subscriptions/raw"}}"#
    );
    PushEnvelope::from_json(body.as_bytes()).expect("envelope")
}

#[test]
fn a_scheduler_envelope_without_data_date_is_dated_only_with_a_trigger_config() {
    let t = scheduler_envelope("2024-03-11T01:30:00Z")
        .decode_with(Some(&new_york_yesterday()))
        .expect("dated from publishTime");
    assert_eq!(t.data_date.to_string(), "2024-03-09");
    assert_eq!(
        scheduler_envelope("2024-03-11T01:30:00Z").decode_with(None),
        Err(BadMessage::NoDate)
    );
}

#[test]
fn an_explicit_data_date_wins_over_publish_time() {
    let body = r#"{"message":{"data":"eyJkYXRhX2RhdGUiOiIyMDI0LTAxLTAyIn0=","messageId":"s-2","publishTime":"2024-03-11T01:30:00Z"}}"#;
    let t = PushEnvelope::from_json(body.as_bytes())
        .unwrap()
        .decode_with(Some(&new_york_yesterday()))
        .unwrap();
    assert_eq!(t.data_date.to_string(), "2024-01-02");
}

const MINIMAL: &str = r#"
[pipeline]
name = "p"
{TRIGGER}
[[phases]]
name = "raw"
input_topic = "trigger-topic"
completion_topic = "raw-done"
{FRESHNESS}
[[phases.processors]]
name = "ingest"
kind = "command"
command = ["true"]
"#;

fn load(trigger: &str, freshness: &str) -> Result<Config, String> {
    let text = MINIMAL
        .replace("{TRIGGER}", trigger)
        .replace("{FRESHNESS}", freshness);
    let mut c = Config::parse(&text, Path::new("p.toml")).map_err(|e| e.to_string())?;
    c.validate().map_err(|e| e.to_string())?;
    Ok(c)
}

#[test]
fn config_names_a_bad_time_zone_deadline_or_offset() {
    let ok = load(
        "[trigger]\ntimezone = \"America/New_York\"\noffset_days = -1\n",
        "freshness = { by = \"09:00\", timezone = \"Europe/Paris\" }",
    )
    .expect("valid");
    assert_eq!(ok.trigger.as_ref().map(|t| t.offset_days), Some(-1));
    assert_eq!(
        ok.phases[0].freshness.as_ref().map(|f| f.offset_days),
        Some(-1)
    );
    let e = load("[trigger]\ntimezone = \"New York\"\n", "").unwrap_err();
    assert!(e.contains("trigger.timezone") && e.contains("IANA"), "{e}");
    let e = load("[trigger]\ntimezone = \"UTC\"\noffset_days = -4000\n", "").unwrap_err();
    assert!(e.contains("trigger.offset_days"), "{e}");
    let e = load("", "freshness = { by = \"9am\", timezone = \"UTC\" }").unwrap_err();
    assert!(
        e.contains("phases[0].freshness.by") && e.contains("HH:MM"),
        "{e}"
    );
}
