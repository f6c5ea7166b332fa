use context_local::ContextLocal;

struct Connection;

#[derive(ContextLocal)]
struct Request {
    #[context_local(no_inherit)]
    conn: Connection,
}

fn main() {
    let _conn = Request::conn().get();
}
