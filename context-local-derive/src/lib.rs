//! The `#[derive(ContextLocal)]` macro of the `context-local` crate.
//!
//! Depend on `context-local` and use `context_local::ContextLocal`; this
//! crate is its implementation detail. The attributes are documented there.

mod ast;
mod attr;
mod expand;
mod valid;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Derives `context_local::ContextLocal` and one accessor per field.
///
/// See the `context_local` crate documentation for the attributes.
#[proc_macro_derive(ContextLocal, attributes(context_local))]
pub fn derive_context_local(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}

#[cfg(test)]
mod fuzz_gen;

/// A few hundred generated definitions, valid and broken: the derive returns
/// tokens that parse as Rust, or a `syn::Error`; it never panics.
#[cfg(test)]
mod fuzz {
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use crate::fuzz_gen::{definition, Rng};

    #[test]
    fn generated_definitions_expand_or_fail_cleanly() {
        let mut rng = Rng::new(0xC0FFEE);
        let (mut accepted, mut rejected) = (0, 0);
        for n in 0..400 {
            let def = definition(&mut rng, n, false);
            let input: syn::DeriveInput = syn::parse_str(&def.source)
                .unwrap_or_else(|e| panic!("the generator wrote invalid Rust ({e}):\n{}", def.source));
            let outcome = catch_unwind(AssertUnwindSafe(|| crate::expand::try_expand(&input)))
                .unwrap_or_else(|_| panic!("the derive panicked on:\n{}", def.source));
            match outcome {
                Ok(tokens) => {
                    syn::parse2::<syn::File>(tokens)
                        .unwrap_or_else(|e| panic!("unparsable expansion ({e}) of:\n{}", def.source));
                    accepted += 1;
                }
                Err(error) => {
                    assert!(def.valid || !error.to_string().is_empty());
                    assert!(!def.valid, "a valid definition was rejected ({error}):\n{}", def.source);
                    rejected += 1;
                }
            }
        }
        assert!(accepted > 100 && rejected > 100, "{accepted} accepted, {rejected} rejected");
    }
}
