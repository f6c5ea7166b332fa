//! Rules that need the whole model: placement, mutual exclusion, names.

use std::collections::HashMap;

use crate::ast::Input;
use syn::LitStr;

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
    check_baggage(input, &mut errors);
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

fn check_baggage(input: &Input, errors: &mut Errors) {
    let mut keys = HashMap::new();
    for field in &input.fields {
        let (Some(baggage), Some(key)) = (&field.attrs.baggage, field.baggage_key()) else { continue };
        if input.attrs.scope() == Scope::Thread {
            errors.push(syn::Error::new_spanned(
                &baggage.path,
                "`baggage` fields must be task-scoped: a baggage member belongs to a request, \
                 and thread-scoped values stay with the OS thread; remove `scope = \"thread\"` \
                 or move the field to a task-scoped struct",
            ));
            continue;
        }
        if !is_token(&key) {
            let message = format!(
                "`{key}` is not a valid baggage key: keys are RFC 7230 tokens (letters, digits and \
                 !#$%&'*+-.^_`|~, no spaces, no `=,;\"/:@`); write e.g. `baggage = \"user.id\"`"
            );
            match &baggage.key {
                Some(literal) => errors.push(syn::Error::new_spanned(literal, message)),
                None => errors.push(syn::Error::new(field.accessor_span(), format!("{message}, or rename the field"))),
            }
            continue;
        }
        if let Some(first) = keys.insert(key.clone(), field.ident_name()) {
            let span = baggage.key.as_ref().map_or_else(|| field.accessor_span(), LitStr::span);
            errors.push(syn::Error::new(
                span,
                format!(
                    "two baggage fields with the key `{key}` (fields `{first}` and `{}`); give one \
                     of them another key with `#[context_local(baggage = \"...\")]`",
                    field.ident_name()
                ),
            ));
        }
    }
}

/// An RFC 7230 `token`: one or more of ALPHA, DIGIT and ``!#$%&'*+-.^_`|~``.
fn is_token(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}
