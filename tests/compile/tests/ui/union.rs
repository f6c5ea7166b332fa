use context_local::ContextLocal;

#[derive(ContextLocal)]
union Bits {
    int: u32,
    float: f32,
}

fn main() {}
