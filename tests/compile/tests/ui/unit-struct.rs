use context_local::ContextLocal;

#[derive(ContextLocal)]
struct Marker;

fn main() {}
