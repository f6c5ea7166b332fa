use context_local::ContextLocal;

#[derive(ContextLocal)]
struct Borrowed<'a> {
    name: &'a str,
}

fn main() {}
