use context_local::ContextLocal;

#[derive(ContextLocal)]
struct Request {
    #[context_local(baggage = "user id")]
    user: u64,
    #[context_local(baggage = "a/b")]
    path: String,
}

fn main() {}
