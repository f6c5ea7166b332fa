use context_local::ContextLocal;

#[derive(ContextLocal)]
#[context_local(scope = "threads", inherits = false)]
struct Request {
    #[context_local(rename = "not an ident")]
    id: u64,
    #[context_local(no_inherit, no_inherit)]
    conn: u64,
    #[context_local(scope = "task")]
    user: u64,
}

fn main() {}
