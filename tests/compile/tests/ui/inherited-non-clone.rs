use context_local::ContextLocal;

struct Connection;

#[derive(ContextLocal)]
struct Request {
    conn: Connection,
}

fn main() {}
