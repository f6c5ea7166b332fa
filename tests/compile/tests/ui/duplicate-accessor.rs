use context_local::ContextLocal;

#[derive(ContextLocal)]
struct Request {
    user: u64,
    #[context_local(rename = "user")]
    user_name: String,
}

fn main() {}
