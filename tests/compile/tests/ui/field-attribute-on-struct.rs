use context_local::ContextLocal;

#[derive(ContextLocal)]
#[context_local(no_inherit)]
struct Request {
    id: u64,
}

fn main() {}
