//! The pipeline: parse into a model, validate, emit.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::DeriveInput;

use crate::ast::{Field, Input, Space};
use crate::attr::{Init, LogFormat};

pub fn derive(node: &DeriveInput) -> TokenStream {
    try_expand(node).unwrap_or_else(syn::Error::into_compile_error)
}

pub(crate) fn try_expand(node: &DeriveInput) -> syn::Result<TokenStream> {
    let input = Input::from_syn(node)?;
    crate::valid::check(&input)?;
    Ok(emit(&input))
}

fn emit(input: &Input) -> TokenStream {
    let krate = input.krate();
    let ident = input.ident;
    let struct_name = input.name();
    let struct_space = space_tokens(input.struct_space());
    let statics: Vec<_> = (0..input.fields.len()).map(|i| format_ident!("__CONTEXT_LOCAL_FIELD_{}", i)).collect();
    let field_statics = input.fields.iter().zip(&statics).map(|(field, name)| field_static(input, field, name));
    let accessors = input.fields.iter().zip(&statics).map(|(field, name)| accessor(input, field, name));
    let (init_fn, init_ref) = init(input);
    let members: Vec<_> = input.fields.iter().map(|field| field.ident).collect();

    quote! {
        #[allow(non_upper_case_globals, clippy::all, clippy::pedantic)]
        const _: () = {
            static __CONTEXT_LOCAL_STRUCT: #krate::__private::StructDesc = #krate::__private::StructDesc::new(
                #struct_name,
                #krate::__private::Space::#struct_space,
                #init_ref,
                &[#(&#statics),*],
            );
            #(#field_statics)*
            #init_fn

            #[automatically_derived]
            impl #ident {
                #(#accessors)*
            }

            #[automatically_derived]
            impl #krate::ContextLocal for #ident {
                fn __descriptor() -> &'static #krate::__private::StructDesc {
                    &__CONTEXT_LOCAL_STRUCT
                }

                fn __store(self, batch: &mut #krate::__private::Batch) {
                    #(batch.put(&#statics, self.#members);)*
                }

                fn __load(parts: &mut #krate::__private::Parts) -> Self {
                    Self { #(#members: parts.next(&#statics),)* }
                }
            }
        };
    }
}

fn space_tokens(space: Space) -> TokenStream {
    match space {
        Space::Shared => quote!(Shared),
        Space::Local => quote!(Local),
        Space::Thread => quote!(Thread),
    }
}

/// The field's descriptor. The type checks (`Send`, `Clone + Send + Sync`)
/// are spanned at the field's type, so a failure points at the user's field.
fn field_static(input: &Input, field: &Field, name: &syn::Ident) -> TokenStream {
    let krate = input.krate();
    let ty = field.ty;
    let space = input.field_space(field);
    let wrap = match space {
        Space::Shared => quote_spanned!(ty.span()=> #krate::__private::wrap_shared::<#ty>),
        Space::Local => quote_spanned!(ty.span()=> #krate::__private::wrap_local::<#ty>),
        Space::Thread => quote_spanned!(ty.span()=> #krate::__private::wrap_thread::<#ty>),
    };
    let default = match &field.attrs.default {
        Some(expr) => {
            let body = quote_spanned!(expr.span()=> fn __context_local_default() -> #ty { #expr });
            quote!(::core::option::Option::Some({ #body __context_local_default as fn() -> #ty }))
        }
        None => quote!(::core::option::Option::None),
    };
    let field_name = format!("{}::{}", input.name(), field.accessor_name());
    let space = space_tokens(space);
    let logged = field.attrs.log.map(|(format, _)| {
        let key = field.accessor_name();
        let format = match format {
            LogFormat::Display => quote_spanned!(ty.span()=> #krate::__private::display_fmt::<#ty>),
            LogFormat::Debug => quote_spanned!(ty.span()=> #krate::__private::debug_fmt::<#ty>),
        };
        quote!(.logged(#key, #format))
    });
    quote! {
        static #name: #krate::__private::FieldDesc<#ty> = #krate::__private::FieldDesc::new(
            #field_name,
            &__CONTEXT_LOCAL_STRUCT,
            #krate::__private::Space::#space,
            #default,
            #wrap,
        )#logged;
    }
}

fn accessor(input: &Input, field: &Field, name: &syn::Ident) -> TokenStream {
    let krate = input.krate();
    let ty = field.ty;
    let vis = &field.original.vis;
    let accessor = field.accessor();
    let doc = format!(
        "The context-local field `{}` of `{}`, in the current {}: its methods \
         (`get`, `set`, `with`, `update`, ...) are those of `context_local::Field`.",
        field.ident_name(),
        input.name(),
        if input.struct_space() == Space::Thread { "thread" } else { "context" },
    );
    quote! {
        #[doc = #doc]
        #[allow(dead_code)]
        #[inline]
        #vis const fn #accessor() -> #krate::Field<#ty> {
            #krate::Field::__new(&#name)
        }
    }
}

/// The generated `init` runner and the reference the descriptor holds.
fn init(input: &Input) -> (TokenStream, TokenStream) {
    let krate = input.krate();
    let ident = input.ident;
    let call = match &input.attrs.init {
        None => return (TokenStream::new(), quote!(::core::option::Option::None)),
        Some(Init::Default(span)) => quote_spanned!(*span=> <#ident as ::core::default::Default>::default()),
        Some(Init::Expr(expr)) => quote_spanned!(expr.span()=> (#expr)()),
    };
    let runner = quote! {
        fn __context_local_init(batch: &mut #krate::__private::Batch) {
            let value: #ident = #call;
            #krate::ContextLocal::__store(value, batch);
        }
    };
    let reference = quote! {
        ::core::option::Option::Some(__context_local_init as fn(&mut #krate::__private::Batch))
    };
    (runner, reference)
}
