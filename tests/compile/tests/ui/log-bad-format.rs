use context_local::ContextLocal;

#[derive(ContextLocal)]
struct Request {
    #[context_local(log = "yaml")]
    id: String,
}

fn main() {}
