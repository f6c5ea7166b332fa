use context_local::ContextLocal;

#[derive(ContextLocal)]
#[context_local(scope = "thread")]
struct Cache {
    #[context_local(no_inherit)]
    entries: Vec<u32>,
}

fn main() {}
