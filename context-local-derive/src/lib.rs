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
