//! Rules that need the whole model: placement, mutual exclusion, names.

use std::collections::HashMap;

use crate::ast::Input;
use crate::attr::{Errors, Scope};

pub fn check(input: &Input) -> syn::Result<()> {
    let mut errors = Errors::default();
    if input.fields.is_empty() {
        errors.push(syn::Error::new_spanned(
            input.ident,
            "ContextLocal needs at least one field: each field becomes an accessor",
        ));
    }
    check_inherit(input, &mut errors);
    check_accessor_names(input, &mut errors);
    errors.finish()
}

fn check_inherit(input: &Input, errors: &mut Errors) {
    let thread = input.attrs.scope() == Scope::Thread;
    if let (true, Some(inherit)) = (thread, &input.attrs.inherit) {
        errors.push(syn::Error::new_spanned(
            inherit,
            "`inherit` has no effect on a thread-scoped struct: thread-scoped values are never \
             inherited; remove it",
        ));
    }
    for field in &input.fields {
        let Some(no_inherit) = &field.attrs.no_inherit else { continue };
        if thread {
            errors.push(syn::Error::new_spanned(
                no_inherit,
                "`no_inherit` has no effect in a thread-scoped struct: thread-scoped values are \
                 never inherited; remove it",
            ));
        } else if !input.inherit() {
            errors.push(syn::Error::new_spanned(
                no_inherit,
                "`no_inherit` has no effect when the struct has `inherit = false`: no field is \
                 inherited; remove it",
            ));
        }
    }
}

fn check_accessor_names(input: &Input, errors: &mut Errors) {
    let mut seen = HashMap::new();
    for field in &input.fields {
        let name = field.accessor_name();
        if let Some(first) = seen.insert(name.clone(), field.ident_name()) {
            errors.push(syn::Error::new(
                field.accessor_span(),
                format!(
                    "two accessors named `{name}` (from fields `{first}` and `{}`); give one of \
                     them another name with `#[context_local(rename = \"...\")]`",
                    field.ident_name()
                ),
            ));
        }
    }
}
