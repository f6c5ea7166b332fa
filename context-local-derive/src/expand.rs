//! The pipeline: parse into a model, validate, emit.

use proc_macro2::{Group, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned, ToTokens};
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
    let no_drop = no_drop(input);
    let with_baggage = input.fields.iter().any(|field| field.attrs.baggage.is_some()).then(|| quote!(.with_baggage()));

    quote! {
        #[allow(non_upper_case_globals, clippy::all, clippy::pedantic)]
        const _: () = {
            static __CONTEXT_LOCAL_STRUCT: #krate::__private::StructDesc = #krate::__private::StructDesc::new(
                #struct_name,
                #krate::__private::Space::#struct_space,
                #init_ref,
                &[#(&#statics),*],
            )#with_baggage;
            #(#field_statics)*
            #init_fn
            #no_drop

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
    let ty = &self_to_ident(field.ty, input.ident);
    let space = input.field_space(field);
    let krate_at_ty = respan(krate.clone(), field.ty.span());
    let constructor = match space {
        Space::Shared => quote_spanned!(field.ty.span()=> #krate_at_ty::__private::FieldDesc::<#ty>::shared),
        Space::Local => quote_spanned!(field.ty.span()=> #krate_at_ty::__private::FieldDesc::<#ty>::local),
        Space::Thread => quote_spanned!(field.ty.span()=> #krate_at_ty::__private::FieldDesc::<#ty>::thread),
    };
    let default = match &field.attrs.default {
        Some(expr) => {
            let expr = self_to_ident(expr, input.ident);
            let body = quote_spanned!(expr.span()=> fn __context_local_default() -> #ty { #expr });
            quote!(::core::option::Option::Some({ #body __context_local_default as fn() -> #ty }))
        }
        None => quote!(::core::option::Option::None),
    };
    let field_name = format!("{}::{}", input.name(), field.accessor_name());
    let logged = field.attrs.log.map(|(format, _)| {
        let key = field.accessor_name();
        let format = match format {
            LogFormat::Display => quote_spanned!(ty.span()=> #krate::__private::display_fmt::<#ty>),
            LogFormat::Debug => quote_spanned!(ty.span()=> #krate::__private::debug_fmt::<#ty>),
        };
        quote!(.logged(#key, #format))
    });
    // The codec's bounds (`Display + FromStr`, the `baggage` feature) are
    // checked at the field's type.
    let baggage = field.baggage_key().map(|key| {
        let codec = respan(quote!(#krate::__private::BaggageCodec::<#ty>::new(#key)), field.ty.span());
        quote!(.baggage(#codec))
    });
    // The whole call is spanned at the field's type: the constructor's bounds
    // (`Send`, `Clone + Send + Sync`) fail there, on the user's field.
    let call =
        respan(quote!(#constructor(#field_name, &__CONTEXT_LOCAL_STRUCT, __CONTEXT_LOCAL_DEFAULT)), field.ty.span());
    // The field's read cache on each thread.
    let cache = format_ident!("{}_CACHE", name);
    quote! {
        ::std::thread_local! {
            static #cache: #krate::__private::Cache<#ty> = const { #krate::__private::Cache::new() };
        }
        static #name: #krate::__private::FieldDesc<#ty> = {
            const __CONTEXT_LOCAL_DEFAULT: ::core::option::Option<fn() -> #ty> = #default;
            #call
        }#logged #baggage .cached(&#cache);
    }
}

fn accessor(input: &Input, field: &Field, name: &syn::Ident) -> TokenStream {
    let krate = input.krate();
    let ty = self_to_ident(field.ty, input.ident);
    let vis = &field.original.vis;
    let accessor = field.accessor();
    let cache = format_ident!("{}_CACHE", name);
    let doc = format!(
        "The context-local field `{}` of `{}`, in the current {}: its methods \
         (`get`, `set`, `with`, `update`, ...) are those of `context_local::Field`.",
        field.ident_name(),
        input.name(),
        if input.struct_space() == Space::Thread { "thread" } else { "context" },
    );
    quote! {
        #[doc = #doc]
        // Named after the field: its name is the user's choice (a lint on it
        // belongs to the field, where the user can allow it).
        #[allow(dead_code, non_snake_case)]
        #[inline]
        #vis const fn #accessor() -> #krate::Field<#ty> {
            #krate::Field::__cached(&#name, &#cache)
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
        Some(Init::Expr(expr)) => {
            let expr = self_to_ident(expr, ident);
            quote_spanned!(expr.span()=> (#expr)())
        }
    };
    let runner = quote! {
        fn __context_local_init(__context_local_batch: &mut #krate::__private::Batch) {
            let __context_local_value: #ident = #call;
            #krate::ContextLocal::__store(__context_local_value, __context_local_batch);
        }
    };
    let reference = quote! {
        ::core::option::Option::Some(__context_local_init as fn(&mut #krate::__private::Batch))
    };
    (runner, reference)
}

/// `tokens` with every `Self` replaced by the struct's name: the field
/// descriptors and the `init` runner live outside the struct's `impl`, where
/// `Self` means nothing, yet `Self` in a field type, a `default` or `init` is
/// valid Rust the user may write.
fn self_to_ident(tokens: &impl ToTokens, ident: &syn::Ident) -> TokenStream {
    replace_self(tokens.to_token_stream(), ident)
}

fn replace_self(tokens: TokenStream, ident: &syn::Ident) -> TokenStream {
    tokens
        .into_iter()
        .map(|tree| match tree {
            TokenTree::Ident(word) if word == "Self" => {
                let mut named = ident.clone();
                named.set_span(word.span());
                TokenTree::Ident(named)
            }
            TokenTree::Group(group) => {
                let mut inner = Group::new(group.delimiter(), replace_self(group.stream(), ident));
                inner.set_span(group.span());
                TokenTree::Group(inner)
            }
            other => other,
        })
        .collect()
}

/// A struct that implements `Drop` cannot give its fields to storage one by
/// one; this makes that a conflict whose trait name says so, at the struct's
/// name.
fn no_drop(input: &Input) -> TokenStream {
    let ident = input.ident;
    quote_spanned! {ident.span()=>
        #[allow(non_camel_case_types, dead_code)]
        trait ContextLocalStructMustNotImplementDrop_PutTheDropOnAFieldType {}
        #[allow(drop_bounds)]
        impl<T: ::core::ops::Drop> ContextLocalStructMustNotImplementDrop_PutTheDropOnAFieldType for T {}
        impl ContextLocalStructMustNotImplementDrop_PutTheDropOnAFieldType for #ident {}
    }
}

/// `tokens` with every span set to `span`, so an error about the whole
/// expression lands there.
fn respan(tokens: TokenStream, span: proc_macro2::Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let TokenTree::Group(group) = &tree {
                let mut inner = Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                tree = TokenTree::Group(inner);
            }
            tree.set_span(span);
            tree
        })
        .collect()
}
