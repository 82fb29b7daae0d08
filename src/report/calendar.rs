//! `status --output html`: a self-contained calendar page (inline CSS and SVG, no network):
//! processors × dates, each cell coloured by its state, the reason on hover, and a legend.

use std::fmt::Write;

use chrono::{Datelike, NaiveDate};

use super::{CellState, StatusGrid};

/// Fill colour and symbol of each state (the symbol keeps the picture readable without
/// colour).
fn style(state: CellState) -> (&'static str, &'static str, &'static str) {
    match state {
        CellState::Success => ("#2e9e44", "✓", "success"),
        CellState::NoData => ("#9ecae1", "∅", "no data (legitimately empty)"),
        CellState::NotProductionReady => ("#b8d86b", "!", "done, not production-ready"),
        CellState::Stale => ("#9467bd", "↻", "stale (newer upstream run)"),
        CellState::Running => ("#f2c744", "…", "running"),
        CellState::Blocked => ("#ff7f0e", "■", "blocked by a strict gate"),
        CellState::Failed => ("#d62728", "✗", "failed"),
        CellState::NotRun => ("#e5e5e5", "", "not run"),
    }
}

const CSS: &str = "
body{font:13px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:18px;margin:0 0 4px}
p.sub{margin:0 0 16px;color:#555}
table.cal{border-collapse:separate;border-spacing:2px}
table.cal th{font-weight:normal;color:#555;font-size:11px;text-align:center;padding:0 1px}
table.cal th.proc{text-align:right;padding-right:8px;white-space:nowrap;color:#222;font-size:12px}
table.cal th.phase{text-align:left;color:#888;font-size:11px;padding-top:8px}
table.cal th.month{text-align:left;color:#222;font-weight:600;white-space:nowrap;border-left:1px solid #ccc;padding-left:3px}
table.cal th.we{color:#999}
td.c{width:18px;height:18px;border-radius:3px;text-align:center;color:#fff;font-size:11px;line-height:18px;cursor:default}
td.c:hover{outline:2px solid #222}
td.tot{padding-left:10px;color:#555;white-space:nowrap;font-size:11px}
.legend{display:flex;flex-wrap:wrap;gap:14px;margin:16px 0}
.legend span{display:inline-flex;align-items:center;gap:5px}
";

/// Minimal HTML escaping for text and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn is_weekend(d: NaiveDate) -> bool {
    d.weekday().number_from_monday() > 5
}

impl StatusGrid {
    /// The calendar page.
    pub fn to_html(&self, pipeline: &str) -> String {
        let range = match (self.dates.first(), self.dates.last()) {
            (Some(a), Some(b)) => format!("{a} – {b}"),
            _ => String::new(),
        };
        let mut out = String::new();
        let _ = write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>phasegate status: {p} {r}</title><style>{CSS}</style></head><body>\n\
             <h1>{p}: run status by date</h1><p class=\"sub\">{r} · latest run of each \
             processor per date · hover a cell for its reason</p>\n",
            p = escape(pipeline),
            r = escape(&range),
        );
        self.legend(&mut out);
        out.push_str("<table class=\"cal\">\n");
        self.header(&mut out);
        self.body(&mut out);
        out.push_str("</table>\n</body></html>\n");
        out
    }

    fn legend(&self, out: &mut String) {
        out.push_str("<div class=\"legend\">");
        for state in CellState::ALL {
            let (fill, _, text) = style(state);
            let _ = write!(
                out,
                "<span class=\"s-{s}\"><svg width=\"14\" height=\"14\" aria-hidden=\"true\">\
                 <rect width=\"14\" height=\"14\" rx=\"3\" fill=\"{fill}\"/></svg>{text}</span>",
                s = state.as_str(),
            );
        }
        out.push_str("</div>\n");
    }

    /// A month row (one label spanning each month's dates) and a day row.
    fn header(&self, out: &mut String) {
        out.push_str("<thead><tr><th></th>");
        let mut months: Vec<(NaiveDate, usize)> = Vec::new();
        for d in &self.dates {
            match months.last_mut() {
                Some((first, n)) if (first.year(), first.month()) == (d.year(), d.month()) => {
                    *n += 1
                }
                _ => months.push((*d, 1)),
            }
        }
        for (first, span) in months {
            let label = if span >= 3 {
                first.format("%b %Y").to_string()
            } else {
                String::new()
            };
            let _ = write!(out, "<th class=\"month\" colspan=\"{span}\">{label}</th>");
        }
        out.push_str("<th></th></tr>\n<tr><th></th>");
        for d in &self.dates {
            let class = if is_weekend(*d) { " class=\"we\"" } else { "" };
            let _ = write!(
                out,
                "<th{class} title=\"{d} ({})\">{}</th>",
                d.format("%a"),
                d.day()
            );
        }
        out.push_str("<th></th></tr></thead>\n");
    }

    fn body(&self, out: &mut String) {
        out.push_str("<tbody>\n");
        let mut phase = None;
        let span = self.dates.len() + 2;
        for p in &self.phases {
            if phase != Some(&p.phase) {
                phase = Some(&p.phase);
                let _ = writeln!(
                    out,
                    "<tr><th class=\"phase\" colspan=\"{span}\">{}</th></tr>",
                    escape(&p.phase)
                );
            }
            let _ = write!(
                out,
                "<tr data-processor=\"{n}\"><th class=\"proc\">{n}</th>",
                n = escape(&p.processor)
            );
            for &d in &self.dates {
                self.cell_html(out, &p.processor, d);
            }
            let done = self.count(&p.processor, CellState::Success)
                + self.count(&p.processor, CellState::NoData);
            let _ = writeln!(
                out,
                "<td class=\"tot\">{done}/{} done</td></tr>",
                self.dates.len()
            );
        }
        out.push_str("</tbody>\n");
    }

    fn cell_html(&self, out: &mut String, processor: &str, date: NaiveDate) {
        let state = self.state(processor, date);
        let (fill, symbol, _) = style(state);
        let mut title = format!("{processor} {date}: {}", state.as_str());
        if let Some(cell) = self.cell(processor, date) {
            if let Some(r) = &cell.reason {
                let _ = write!(title, " — {r}");
            }
            let _ = write!(title, " (run {}, started {})", cell.run_id, cell.started_at);
        }
        let _ = write!(
            out,
            "<td class=\"c s-{s}\" data-date=\"{date}\" data-state=\"{s}\" \
             style=\"background:{fill}\" title=\"{t}\">{symbol}</td>",
            s = state.as_str(),
            t = escape(&title),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_markup_in_reasons() {
        assert_eq!(
            escape(r#"<b>"x" & 'y'</b>"#),
            "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"
        );
    }
}
