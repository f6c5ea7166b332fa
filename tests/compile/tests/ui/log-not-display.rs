use context_local::ContextLocal;

#[derive(Clone)]
struct Opaque;

#[derive(ContextLocal)]
struct Request {
    #[context_local(log)]
    body: Opaque,
}

fn main() {}
