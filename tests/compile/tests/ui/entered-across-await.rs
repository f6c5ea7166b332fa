use context_local::ContextLocal;

#[derive(ContextLocal)]
struct Request {
    id: u64,
}

async fn work() {}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        tokio::spawn(async {
            let _guard = Request { id: 1 }.enter();
            work().await;
        });
    });
}
