use context_local::ContextLocal;

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct Request {
    #[context_local(baggage)]
    tenant: String,
}

fn main() {}
