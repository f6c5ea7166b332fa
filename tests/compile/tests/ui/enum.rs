use context_local::ContextLocal;

#[derive(ContextLocal)]
enum Request {
    Anonymous,
    User(u64),
}

fn main() {}
