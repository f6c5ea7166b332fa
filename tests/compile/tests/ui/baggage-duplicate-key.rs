use context_local::ContextLocal;

#[derive(ContextLocal)]
struct Request {
    #[context_local(baggage = "tenant")]
    tenant: String,
    #[context_local(baggage = "tenant")]
    org: String,
}

fn main() {}
