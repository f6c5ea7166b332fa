//! Valid Rust the derive must accept: `Self` in field types, `default` and
//! `init`, and an `init` function named like the derive's own internals.
#![forbid(unsafe_code)]

use context_local::ContextLocal;

fn batch() -> Counter {
    Counter { hits: 10, children: Vec::new() }
}

#[derive(ContextLocal)]
#[context_local(init = batch)]
struct Counter {
    hits: u64,
    #[context_local(default = vec![Vec::<Self>::new().len()])]
    children: Vec<usize>,
}

#[derive(ContextLocal)]
#[context_local(init = Self::fresh)]
struct Tree {
    #[context_local(no_inherit)]
    parent: Option<Box<Self>>,
    depth: u32,
}

impl Tree {
    fn fresh() -> Self {
        Tree { parent: None, depth: 1 }
    }
}

#[test]
fn an_init_function_named_batch_is_called() {
    assert_eq!(Counter::hits().get(), Some(10));
    assert_eq!(Counter::children().get(), Some(Vec::new()), "`init` set it");
    Counter::children().delete();
    assert_eq!(Counter::children().get(), Some(vec![0]), "the default names `Self`");
}

#[test]
fn init_and_field_types_may_say_self() {
    assert_eq!(Tree::depth().get(), Some(1));
    Tree::parent().set(Some(Box::new(Tree { parent: None, depth: 0 })));
    assert_eq!(Tree::parent().with(|p| p.as_ref().map(|p| p.depth)), Some(Some(0)));
}

/// A field the user named in camel case (and allowed, on the struct): the
/// generated accessor, named after it, adds no warning of its own (this
/// module denies it, so a warning would fail the build).
#[deny(non_snake_case)]
mod camel_case_field {
    use context_local::ContextLocal;

    #[derive(ContextLocal)]
    #[allow(non_snake_case)]
    pub struct Legacy {
        pub threadName: String,
    }
}

#[test]
fn a_camel_case_field_allowed_on_the_struct_warns_nowhere() {
    use camel_case_field::Legacy;
    context_local::Context::new().run(|| {
        Legacy::threadName().set("main".into());
        assert_eq!(Legacy::threadName().get().as_deref(), Some("main"));
    });
}
