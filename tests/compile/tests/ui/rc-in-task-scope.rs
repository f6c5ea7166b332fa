use std::rc::Rc;

use context_local::ContextLocal;

#[derive(ContextLocal)]
struct Request {
    #[context_local(no_inherit)]
    shared: Rc<u32>,
}

fn main() {}
