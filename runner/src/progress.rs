//! Terminal output and per-node logs.
//!
//! - [`init`] installs the global tracing subscriber: on a terminal, an indicatif layer
//!   (`tracing-indicatif`) draws one bar per running node and log lines go through its writer so
//!   they never break the bars; elsewhere (pipes, CI) plain lines and no bars.
//! - Every node runs inside a tracing span named `node` with field `id`. [`NodeLogLayer`]
//!   copies each event inside such a span into that node's log file (opened with
//!   [`nodelog::open`]), so logs stay per node even with `--jobs > 1`. Both the terminal and
//!   the node logs are filtered by [`nodelog::directives`]: temper's events at the run's level,
//!   dependencies' at WARN; node logs never go below INFO, even with `-q`.
//! - A node's stage runs in a worker process; the executor re-emits the worker's log events
//!   inside the node's span ([`forward`]), so the node log and the terminal treat them as if the
//!   stage ran here, and drives the node's bar from its progress events ([`NodeProgress`], a
//!   no-op when no bars are shown).

use crate::nodelog;
use kinds::job;
use std::sync::OnceLock;
use tracing::field::{Field, Visit};
use tracing::{Event, Span, Subscriber};
use tracing_indicatif::span_ext::IndicatifSpanExt;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The span a node runs in; `indicatif.pb_show` makes it get a bar.
pub fn node_span(id: &str) -> Span {
    tracing::info_span!("node", id = %id, indicatif.pb_show = tracing::field::Empty)
}

/// The instance id a `node` span was created with.
struct NodeId(String);

struct IdVisitor(Option<String>);
impl Visit for IdVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "id" {
            self.0 = Some(value.to_string());
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "id" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

/// Writes events inside a `node` span to that node's log file.
pub struct NodeLogLayer;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for NodeLogLayer {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        if attrs.metadata().name() != "node" {
            return;
        }
        let mut v = IdVisitor(None);
        attrs.record(&mut v);
        if let (Some(node), Some(span)) = (v.0, ctx.span(id)) {
            span.extensions_mut().insert(NodeId(node));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        for span in scope {
            if let Some(NodeId(node)) = span.extensions().get::<NodeId>() {
                nodelog::line(
                    node,
                    event.metadata().level().as_str(),
                    &job::log_message(event),
                );
                return;
            }
        }
    }
}

/// Installs the global subscriber. `verbosity`: -1 quiet (errors), 0 info, 1 debug, 2 trace
/// (temper's own events), 3+ everything; `RUST_LOG` overrides. Bars only when `bars` and stderr
/// is a terminal. Returns whether bars are shown. Safe to call twice (the second call does
/// nothing).
pub fn init(verbosity: i8, bars: bool) -> bool {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let filter_for = |v: i8| {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(nodelog::directives(v)))
    };
    let _ = NODE_LOG_FILTER.set(node_log_filter(verbosity));
    let node_logs = NodeLogLayer.with_filter(filter_for(verbosity.max(0)));
    let bars = bars && std::io::stderr().is_terminal();
    // With bars, per-step lines would scroll them away: the bar shows the loss instead.
    let filter = if bars && std::env::var_os("RUST_LOG").is_none() {
        let d = format!(
            "{},{}=warn",
            nodelog::directives(verbosity),
            job::STEP_TARGET
        );
        tracing_subscriber::EnvFilter::new(d)
    } else {
        filter_for(verbosity)
    };
    let result = if bars {
        let indicatif = tracing_indicatif::IndicatifLayer::new()
            .with_span_field_formatter(tracing_indicatif::filter::hide_indicatif_span_fields(
                tracing_subscriber::fmt::format::DefaultFields::new(),
            ))
            .with_progress_style(bar_style());
        // Terminal lines carry no timestamps (the per-node log files do): the bars show time.
        let fmt = tracing_subscriber::fmt::layer()
            .with_target(false)
            .without_time()
            .with_writer(indicatif.get_stderr_writer());
        tracing_subscriber::registry()
            .with(node_logs)
            .with(fmt.with_filter(filter))
            .with(indicatif.with_filter(tracing_indicatif::filter::IndicatifFilter::new(false)))
            .try_init()
    } else {
        let fmt = tracing_subscriber::fmt::layer()
            .with_target(false)
            .without_time()
            .with_ansi(false)
            .with_writer(std::io::stderr);
        tracing_subscriber::registry()
            .with(node_logs)
            .with(fmt.with_filter(filter))
            .try_init()
    };
    bars && result.is_ok()
}

fn bar_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(
        "{span_child_prefix}{spinner} {span_fields} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ")
}

/// Drives the bar of a node's span.
pub struct NodeProgress {
    span: Span,
}

impl NodeProgress {
    pub fn new(span: Span) -> Self {
        NodeProgress { span }
    }
}

impl NodeProgress {
    /// Applies a worker's progress event to the bar.
    pub fn apply(&self, p: job::Progress) {
        match p {
            job::Progress::SetLength(n) => self.span.pb_set_length(n),
            job::Progress::SetPosition(n) => self.span.pb_set_position(n),
            job::Progress::Inc(n) => self.span.pb_inc(n),
            job::Progress::SetMessage(m) => self.span.pb_set_message(&m),
        }
    }
}

/// The node-log filter's directives for a verbosity: `RUST_LOG` when set, else
/// [`nodelog::directives`] (never below INFO).
fn node_log_filter(verbosity: i8) -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| nodelog::directives(verbosity.max(0)))
}

static NODE_LOG_FILTER: OnceLock<String> = OnceLock::new();

/// The directives a worker filters its log events with: the node-log filter [`init`] set up
/// (INFO's when `init` was not called).
pub fn worker_log_filter() -> String {
    NODE_LOG_FILTER
        .get()
        .cloned()
        .unwrap_or_else(|| node_log_filter(0))
}

/// Re-emits a worker's log event here, inside the current (node) span: the trainer's step
/// lines under [`job::STEP_TARGET`] (the terminal hides them behind bars), everything else
/// under [`job::WORKER_TARGET`] (already filtered by the worker).
pub fn forward(level: &str, target: &str, message: &str) {
    macro_rules! emit {
        ($t:expr) => {
            match level {
                "ERROR" => tracing::error!(target: $t, "{message}"),
                "WARN" => tracing::warn!(target: $t, "{message}"),
                "INFO" => tracing::info!(target: $t, "{message}"),
                "DEBUG" => tracing::debug!(target: $t, "{message}"),
                _ => tracing::trace!(target: $t, "{message}"),
            }
        };
    }
    if target.starts_with(job::STEP_TARGET) {
        emit!(job::STEP_TARGET)
    } else {
        emit!(job::WORKER_TARGET)
    }
}
