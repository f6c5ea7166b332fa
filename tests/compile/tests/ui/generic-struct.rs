use context_local::ContextLocal;

#[derive(ContextLocal)]
struct Slot<T> {
    value: T,
}

fn main() {}
