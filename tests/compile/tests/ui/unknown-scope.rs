use context_local::ContextLocal;

#[derive(ContextLocal)]
#[context_local(scope = "process")]
struct Request {
    id: u64,
}

fn main() {}
