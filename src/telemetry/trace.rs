//! Trace correlation for JSON logs: a request's `traceparent` / `X-Cloud-Trace-Context` is
//! kept on its span, and every JSON line written inside that span gets
//! `logging.googleapis.com/trace` (`projects/PROJECT/traces/TRACE_ID`) and
//! `logging.googleapis.com/spanId` spliced in, so Cloud Logging groups the lines of one push.

use std::cell::RefCell;
use std::io::Write;

use hyper::HeaderMap;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// The span field that carries a request's trace (`TRACE_ID/SPAN_ID`).
const TRACE_FIELD: &str = "cloud_trace";

/// The stackdriver JSON layer, writing to stdout with the trace fields of each line's
/// request (`project`: the Google Cloud project of `logging.googleapis.com/trace`).
pub(super) fn json_layer<S>(project: Option<String>) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    TracedJson {
        inner: tracing_stackdriver::layer().with_writer(TraceWriter { project }),
    }
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

#[cfg(test)]
mod tests {
    use super::TraceContext;

    #[test]
    fn parses_both_header_formats_and_ignores_malformed_ones() {
        let t = TraceContext::from_cloud_trace("105445AA7843BC8BF206B12000100000/255;o=1").unwrap();
        assert_eq!(t.trace_id, "105445aa7843bc8bf206b12000100000");
        assert_eq!(t.span_id.as_deref(), Some("00000000000000ff"));
        let t = TraceContext::from_cloud_trace("105445aa7843bc8bf206b12000100000").unwrap();
        assert_eq!(t.span_id, None);
        let t = TraceContext::from_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .unwrap();
        assert_eq!(t.span_id.as_deref(), Some("00f067aa0ba902b7"));
        for bad in ["", "xyz/1", "105445aa/1;o=1"] {
            assert_eq!(TraceContext::from_cloud_trace(bad), None, "{bad}");
        }
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-short-01",
            "garbage",
        ] {
            assert_eq!(TraceContext::from_traceparent(bad), None, "{bad}");
        }
    }
}
