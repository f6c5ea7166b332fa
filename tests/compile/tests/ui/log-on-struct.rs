use context_local::ContextLocal;

#[derive(ContextLocal)]
#[context_local(log)]
struct Request {
    id: String,
}

fn main() {}
