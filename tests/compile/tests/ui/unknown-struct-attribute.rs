use context_local::ContextLocal;

#[derive(ContextLocal)]
#[context_local(scop = "thread")]
struct Request {
    id: u64,
}

fn main() {}
