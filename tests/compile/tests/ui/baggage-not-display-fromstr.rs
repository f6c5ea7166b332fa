use context_local::ContextLocal;

#[derive(Clone)]
struct Tenant(String);

#[derive(ContextLocal)]
struct Request {
    #[context_local(baggage)]
    tenant: Tenant,
}

fn main() {}
