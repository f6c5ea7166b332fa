use context_local::ContextLocal;

#[derive(ContextLocal)]
struct RequestId(String);

fn main() {}
