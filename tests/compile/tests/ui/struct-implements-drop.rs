use context_local::ContextLocal;

#[derive(ContextLocal)]
struct Request {
    id: u64,
}

impl Drop for Request {
    fn drop(&mut self) {}
}

fn main() {}
