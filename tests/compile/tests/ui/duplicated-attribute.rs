use context_local::ContextLocal;

#[derive(ContextLocal)]
#[context_local(scope = "task")]
#[context_local(scope = "thread")]
struct Request {
    id: u64,
}

fn main() {}
