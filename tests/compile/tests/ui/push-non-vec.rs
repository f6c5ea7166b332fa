use context_local::ContextLocal;

#[derive(ContextLocal)]
struct Request {
    count: u64,
}

fn main() {
    Request::count().push(1);
}
