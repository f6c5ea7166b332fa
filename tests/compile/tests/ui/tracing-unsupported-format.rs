use context_local::tracing::ContextFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

#[derive(Clone)]
struct MyFormat;

impl<S, N> FormatEvent<S, N> for MyFormat
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _: &FmtContext<'_, S, N>, _: Writer<'_>, _: &tracing::Event<'_>) -> std::fmt::Result {
        Ok(())
    }
}

fn main() {
    let _ = ContextFields::new(MyFormat);
}
