//! Logging: JSON for Cloud Logging (tracing-stackdriver) on Cloud Run, compact text locally;
//! per-request trace correlation and the one summary line per push.
//!
//! A request carrying `traceparent` or `X-Cloud-Trace-Context` gets a span holding its
//! [`TraceContext`]; every JSON line logged inside it carries
//! `logging.googleapis.com/trace` = `projects/$GOOGLE_CLOUD_PROJECT/traces/TRACE_ID` and
//! `logging.googleapis.com/spanId`, so Cloud Logging groups the lines of one push.

use std::cell::RefCell;
use std::io::Write;
use std::time::Duration;

use hyper::HeaderMap;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// The span field that carries a request's trace (`TRACE_ID/SPAN_ID`).
const TRACE_FIELD: &str = "cloud_trace";

/// Log as JSON when `PHASEGATE_LOG_FORMAT=json`, or on Cloud Run (`K_SERVICE` is set);
/// as text on stderr otherwise. `RUST_LOG` filters (default `info`).
pub fn init(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let json = std::env::var("PHASEGATE_LOG_FORMAT")
        .map(|v| v == "json")
        .unwrap_or(false)
        || std::env::var_os("K_SERVICE").is_some();
    let result = if json {
        let project = std::env::var("GOOGLE_CLOUD_PROJECT")
            .ok()
            .filter(|p| !p.is_empty());
        Registry::default()
            .with(filter)
            .with(TracedJson {
                inner: tracing_stackdriver::layer().with_writer(TraceWriter { project }),
            })
            .try_init()
    } else {
        Registry::default()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .compact()
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    // Already initialised (tests): keep the first subscriber.
    let _ = result;
}

/// A request's position in a distributed trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits, when the caller sent one.
    pub span_id: Option<String>,
}

impl TraceContext {
    /// From `traceparent` (W3C, preferred) or `X-Cloud-Trace-Context`
    /// (`TRACE_ID/SPAN_ID;o=1`, the span id in decimal).
    pub fn from_headers(headers: &HeaderMap) -> Option<TraceContext> {
        let get = |name| headers.get(name).and_then(|v| v.to_str().ok());
        get("traceparent")
            .and_then(Self::from_traceparent)
            .or_else(|| get("x-cloud-trace-context").and_then(Self::from_cloud_trace))
    }

    /// `00-<trace id>-<parent id>-<flags>`.
    pub fn from_traceparent(value: &str) -> Option<TraceContext> {
        let mut parts = value.trim().split('-');
        let (_version, trace, span) = (parts.next()?, parts.next()?, parts.next()?);
        let ok = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok(trace, 32) || !ok(span, 16) || trace.bytes().all(|b| b == b'0') {
            return None;
        }
        Some(TraceContext {
            trace_id: trace.to_ascii_lowercase(),
            span_id: Some(span.to_ascii_lowercase()),
        })
    }

    /// `TRACE_ID[/SPAN_ID][;o=OPTIONS]`.
    pub fn from_cloud_trace(value: &str) -> Option<TraceContext> {
        let ids = value.trim().split(';').next()?;
        let (trace, span) = match ids.split_once('/') {
            Some((t, s)) => (t, Some(s)),
            None => (ids, None),
        };
        if trace.len() != 32 || !trace.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(TraceContext {
            trace_id: trace.to_ascii_lowercase(),
            span_id: span
                .and_then(|s| s.parse::<u64>().ok())
                .map(|n| format!("{n:016x}")),
        })
    }

    fn to_field(&self) -> String {
        format!(
            "{}/{}",
            self.trace_id,
            self.span_id.as_deref().unwrap_or("")
        )
    }

    fn from_field(value: &str) -> Option<TraceContext> {
        let (trace, span) = value.split_once('/')?;
        Some(TraceContext {
            trace_id: trace.to_string(),
            span_id: (!span.is_empty()).then(|| span.to_string()),
        })
    }
}

/// The span one HTTP request is handled in. Its level is ERROR so that every enabled log
/// line of the request, whatever the filter, is inside it and carries the trace.
pub fn request_span(headers: &HeaderMap) -> tracing::Span {
    let span = tracing::error_span!("request", cloud_trace = tracing::field::Empty);
    if let Some(t) = TraceContext::from_headers(headers) {
        span.record(TRACE_FIELD, t.to_field());
    }
    span
}

/// What the summary line of one push says.
pub struct PushSummary<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub status: u16,
    pub latency: Duration,
    pub phase: &'a str,
    pub data_date: Option<String>,
    pub message_id: Option<String>,
    pub delivery_attempt: Option<u32>,
    pub outcome: &'a str,
}

impl PushSummary<'_> {
    /// One line per push; `http_request.*` becomes Cloud Logging's `httpRequest`.
    pub fn log(&self) {
        // Whole milliseconds: the stackdriver layer writes floats as strings; the exact
        // duration is in `httpRequest.latency`.
        let latency_ms = u64::try_from(self.latency.as_millis()).unwrap_or(u64::MAX);
        tracing::info!(
            http_request.request_method = self.method,
            http_request.request_url = self.url,
            http_request.status = self.status,
            http_request.latency = format!("{:.6}s", self.latency.as_secs_f64()),
            phase = self.phase,
            data_date = self.data_date.as_deref().unwrap_or(""),
            messageId = self.message_id.as_deref().unwrap_or(""),
            delivery_attempt = self.delivery_attempt,
            outcome = self.outcome,
            latency_ms,
            "push summary"
        );
    }
}

thread_local! {
    /// The trace of the event being written on this thread (set around one `on_event`).
    static CURRENT_TRACE: RefCell<Option<TraceContext>> = const { RefCell::new(None) };
}

/// The stackdriver JSON layer, plus the trace of the event's request span.
struct TracedJson<L> {
    inner: L,
}

struct TraceVisitor(Option<TraceContext>);

impl Visit for TraceVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == TRACE_FIELD {
            self.0 = TraceContext::from_field(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == TRACE_FIELD {
            self.0 = TraceContext::from_field(format!("{value:?}").trim_matches('"'));
        }
    }
}

fn store_trace<S>(id: &Id, ctx: &Context<'_, S>, visit: impl FnOnce(&mut TraceVisitor))
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let mut visitor = TraceVisitor(None);
    visit(&mut visitor);
    if let (Some(trace), Some(span)) = (visitor.0, ctx.span(id)) {
        span.extensions_mut().replace(trace);
    }
}

impl<S, L> Layer<S> for TracedJson<L>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        store_trace(id, &ctx, |v| attrs.record(v));
        self.inner.on_new_span(attrs, id, ctx);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        store_trace(id, &ctx, |v| values.record(v));
        self.inner.on_record(id, values, ctx);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let trace = ctx.event_scope(event).and_then(|scope| {
            scope
                .into_iter()
                .find_map(|span| span.extensions().get::<TraceContext>().cloned())
        });
        CURRENT_TRACE.with(|c| *c.borrow_mut() = trace);
        self.inner.on_event(event, ctx);
        CURRENT_TRACE.with(|c| *c.borrow_mut() = None);
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        self.inner.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        self.inner.on_exit(id, ctx);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        self.inner.on_close(id, ctx);
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: Context<'_, S>) {
        self.inner.on_follows_from(id, follows, ctx);
    }
}

/// Writes each JSON line to stdout with the trace fields of [`CURRENT_TRACE`] spliced in.
struct TraceWriter {
    project: Option<String>,
}

struct TraceLine<'a> {
    project: Option<&'a str>,
}

impl<'a> MakeWriter<'a> for TraceWriter {
    type Writer = TraceLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        TraceLine {
            project: self.project.as_deref(),
        }
    }
}

impl TraceLine<'_> {
    /// `"logging.googleapis.com/trace":"…","logging.googleapis.com/spanId":"…",`
    fn fields(&self, trace: &TraceContext) -> String {
        let mut fields = serde_json::Map::new();
        if let Some(project) = self.project {
            fields.insert(
                "logging.googleapis.com/trace".into(),
                format!("projects/{project}/traces/{}", trace.trace_id).into(),
            );
        }
        if let Some(span) = &trace.span_id {
            fields.insert("logging.googleapis.com/spanId".into(), span.clone().into());
        }
        let text = serde_json::Value::Object(fields).to_string();
        // `{"a":1,"b":2}` → `"a":1,"b":2,`
        match text.len() {
            0..=2 => String::new(),
            n => format!("{},", &text[1..n - 1]),
        }
    }
}

impl Write for TraceLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let trace = CURRENT_TRACE.with(|c| c.borrow().clone());
        let mut out = std::io::stdout().lock();
        let written = match (trace, buf.split_first()) {
            (Some(t), Some((b'{', rest))) => {
                let fields = self.fields(&t);
                out.write_all(b"{")
                    .and_then(|()| out.write_all(fields.as_bytes()))
                    .and_then(|()| out.write_all(rest))
            }
            _ => out.write_all(buf),
        };
        // A closed stdout must not take the worker down with it.
        match written {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
            _ => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

/// After a push: its summary line and its metrics.
pub fn push_done(
    config: &crate::config::Config,
    phase: &str,
    url: &str,
    body: &[u8],
    outcome: &crate::worker::PushOutcome,
    started: std::time::Instant,
) {
    let latency = started.elapsed();
    let envelope = crate::envelope::PushEnvelope::from_json(body).ok();
    let data_date = envelope.clone().and_then(|e| {
        e.decode_with(config.trigger.as_ref())
            .ok()
            .map(|t| t.data_date.to_string())
    });
    let (message_id, delivery_attempt) = envelope.map_or((None, None), |e| {
        (
            Some(e.message.message_id).filter(|m| !m.is_empty()),
            e.delivery_attempt,
        )
    });
    PushSummary {
        method: "POST",
        url,
        status: outcome.http_status(),
        latency,
        phase,
        data_date,
        message_id,
        delivery_attempt,
        outcome: outcome.label(),
    }
    .log();
    crate::metrics::push_handled(phase, outcome.label(), latency.as_secs_f64());
}
