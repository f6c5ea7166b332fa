//! The model of a `#[derive(ContextLocal)]` input. It borrows the syn nodes,
//! so every later error can point at the user's own tokens.

use proc_macro2::{Span, TokenStream};
use quote::{quote, ToTokens};
use syn::ext::IdentExt;
use syn::{Data, DeriveInput, Fields, GenericParam, Ident, LitStr, Type};

use crate::attr::{self, Errors, FieldAttrs, Scope, StructAttrs};

pub struct Input<'a> {
    pub ident: &'a Ident,
    pub attrs: StructAttrs,
    pub fields: Vec<Field<'a>>,
}

pub struct Field<'a> {
    pub original: &'a syn::Field,
    pub ident: &'a Ident,
    pub ty: &'a Type,
    pub attrs: FieldAttrs,
}

/// Where a field's (or a struct's init marker's) values live at run time.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Shared,
    Local,
    Thread,
}

impl<'a> Input<'a> {
    /// Parses the input, reporting every mistake found, not just the first.
    pub fn from_syn(node: &'a DeriveInput) -> syn::Result<Self> {
        let mut errors = Errors::default();
        let named = match &node.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(named) => Some(named),
                Fields::Unnamed(unnamed) => {
                    errors.push(syn::Error::new_spanned(
                        unnamed,
                        "ContextLocal needs named fields, one accessor per field; \
                         write `struct Name { field: Type }`",
                    ));
                    None
                }
                Fields::Unit => {
                    errors.push(syn::Error::new_spanned(
                        &node.ident,
                        "ContextLocal does not support unit structs; \
                         add named fields, one accessor per field: `struct Name { field: Type }`",
                    ));
                    None
                }
            },
            Data::Enum(data) => {
                return Err(syn::Error::new_spanned(
                    data.enum_token,
                    "ContextLocal does not support enums; use a struct with named fields, \
                     with an `Option` or enum-typed field for the alternatives",
                ))
            }
            Data::Union(data) => {
                return Err(syn::Error::new_spanned(
                    data.union_token,
                    "ContextLocal does not support unions; use a struct with named fields",
                ))
            }
        };
        check_generics(node, &mut errors);
        let attrs = attr::struct_attrs(&node.attrs, &mut errors);
        let fields = named
            .map(|named| named.named.iter().map(|field| Field::from_syn(field, &mut errors)).collect())
            .unwrap_or_default();
        errors.finish()?;
        Ok(Input { ident: &node.ident, attrs, fields })
    }

    /// The struct's name as written, without `r#`.
    pub fn name(&self) -> String {
        self.ident.unraw().to_string()
    }

    /// The path of the runtime crate: `crate = ..` or `::context_local`.
    pub fn krate(&self) -> TokenStream {
        match &self.attrs.krate {
            Some(path) => path.to_token_stream(),
            None => quote!(::context_local),
        }
    }

    pub fn inherit(&self) -> bool {
        self.attrs.inherit.as_ref().is_none_or(|lit| lit.value)
    }

    /// Where the struct's "initialised" marker lives.
    pub fn struct_space(&self) -> Space {
        match (self.attrs.scope(), self.inherit()) {
            (Scope::Thread, _) => Space::Thread,
            (Scope::Task, true) => Space::Shared,
            (Scope::Task, false) => Space::Local,
        }
    }

    pub fn field_space(&self, field: &Field) -> Space {
        match self.struct_space() {
            Space::Shared if field.attrs.no_inherit.is_some() => Space::Local,
            space => space,
        }
    }
}

fn check_generics(node: &DeriveInput, errors: &mut Errors) {
    for param in &node.generics.params {
        let message = match param {
            GenericParam::Lifetime(_) => {
                "ContextLocal does not support lifetime parameters: stored values must be `'static`; \
                 use owned types such as `String` or `Arc<str>` instead of references"
            }
            GenericParam::Type(_) | GenericParam::Const(_) => {
                "ContextLocal does not support generic parameters: each struct has one set of \
                 storage slots; use concrete field types (a separate struct per type)"
            }
        };
        errors.push(syn::Error::new_spanned(param, message));
    }
}

impl<'a> Field<'a> {
    fn from_syn(field: &'a syn::Field, errors: &mut Errors) -> Self {
        Field {
            original: field,
            ident: field.ident.as_ref().expect("named fields have idents"),
            ty: &field.ty,
            attrs: attr::field_attrs(&field.attrs, errors),
        }
    }

    /// The accessor's identifier: `rename` if given, else the field's own.
    pub fn accessor(&self) -> Ident {
        match &self.attrs.rename {
            Some(rename) => rename.ident.clone(),
            None => self.ident.clone(),
        }
    }

    /// The accessor's name as written, without `r#`.
    pub fn accessor_name(&self) -> String {
        self.accessor().unraw().to_string()
    }

    /// The field's name as written, without `r#`.
    pub fn ident_name(&self) -> String {
        self.ident.unraw().to_string()
    }

    /// The W3C Baggage member key of a `baggage` field: the one given, else
    /// the accessor's name.
    pub fn baggage_key(&self) -> Option<String> {
        let baggage = self.attrs.baggage.as_ref()?;
        Some(baggage.key.as_ref().map_or_else(|| self.accessor_name(), LitStr::value))
    }

    /// Where an error about the accessor's name should point.
    pub fn accessor_span(&self) -> Span {
        match &self.attrs.rename {
            Some(rename) => rename.literal.span(),
            None => self.ident.span(),
        }
    }
}
