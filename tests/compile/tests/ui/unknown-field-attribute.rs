use context_local::ContextLocal;

#[derive(ContextLocal)]
struct Request {
    #[context_local(defalt = 0)]
    id: u64,
}

fn main() {}
