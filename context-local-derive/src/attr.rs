//! `#[context_local(..)]` attributes, parsed once with their spans. Unknown
//! and duplicated keys are reported while parsing, every one of them.

use proc_macro2::Span;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, Ident, LitBool, LitStr, Path};

const STRUCT_KEYS: &str = "scope, init, inherit, crate";
const FIELD_KEYS: &str = "default, no_inherit, rename, log, baggage";

/// Errors gathered so that all mistakes are reported at once.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    pub fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(first) => first.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Task,
    Thread,
}

pub enum Init {
    /// Bare `init`: `Default::default`, spanned at the keyword.
    Default(Span),
    /// `init = path` (any expression of type `fn() -> Self`).
    Expr(Expr),
}

#[derive(Default)]
pub struct StructAttrs {
    pub scope: Option<(Scope, LitStr)>,
    pub init: Option<Init>,
    pub inherit: Option<LitBool>,
    pub krate: Option<Path>,
}

impl StructAttrs {
    pub fn scope(&self) -> Scope {
        self.scope.as_ref().map_or(Scope::Task, |(scope, _)| *scope)
    }
}

pub struct Rename {
    pub ident: Ident,
    pub literal: LitStr,
}

/// How a `log` field is formatted in log lines.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Display,
    Debug,
}

#[derive(Default)]
pub struct FieldAttrs {
    pub default: Option<Expr>,
    pub no_inherit: Option<Path>,
    pub rename: Option<Rename>,
    /// `log` (Display) or `log = "debug"`, with the key's span.
    pub log: Option<(LogFormat, Span)>,
    /// `baggage` or `baggage = "key"`.
    pub baggage: Option<Baggage>,
}

/// A field that travels as a W3C Baggage member.
pub struct Baggage {
    /// The `baggage` keyword, for errors about the field as a whole.
    pub path: Path,
    /// `baggage = "key"`: the key as written; `None` means the accessor's name.
    pub key: Option<LitStr>,
}

pub fn struct_attrs(attrs: &[Attribute], errors: &mut Errors) -> StructAttrs {
    let mut out = StructAttrs::default();
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("context_local")) {
        let parsed = attr.parse_nested_meta(|meta| {
            let key = key_of(&meta);
            match key.as_str() {
                // #[context_local(scope = "task")] or #[context_local(scope = "thread")]
                "scope" => {
                    let literal: LitStr = meta.value()?.parse()?;
                    let scope = match literal.value().as_str() {
                        "task" => Scope::Task,
                        "thread" => Scope::Thread,
                        other => {
                            errors.push(syn::Error::new_spanned(
                                &literal,
                                format!("unknown scope `{other}`; expected \"task\" or \"thread\""),
                            ));
                            return Ok(());
                        }
                    };
                    set_once(&mut out.scope, (scope, literal), &meta, errors);
                }
                // #[context_local(init)] or #[context_local(init = path::to::constructor)]
                "init" => {
                    let init = if meta.input.peek(syn::Token![=]) {
                        Init::Expr(meta.value()?.parse()?)
                    } else {
                        Init::Default(meta.path.get_ident().map_or_else(Span::call_site, Ident::span))
                    };
                    set_once(&mut out.init, init, &meta, errors);
                }
                // #[context_local(inherit = false)]
                "inherit" => {
                    let value: LitBool = meta.value()?.parse()?;
                    set_once(&mut out.inherit, value, &meta, errors);
                }
                // #[context_local(crate = path::to::context_local)]
                "crate" => {
                    let value = meta.value()?;
                    let path = if value.peek(LitStr) { value.parse::<LitStr>()?.parse()? } else { value.parse()? };
                    set_once(&mut out.krate, path, &meta, errors);
                }
                "default" | "no_inherit" | "rename" | "log" | "baggage" => {
                    errors.push(
                        meta.error(format!("`{key}` is a field attribute; put it on a field, not on the struct")),
                    );
                    skip_value(&meta)?;
                }
                _ => {
                    errors.push(
                        meta.error(format!("unknown context_local attribute `{key}`; expected one of: {STRUCT_KEYS}")),
                    );
                    skip_value(&meta)?;
                }
            }
            Ok(())
        });
        if let Err(error) = parsed {
            errors.push(error);
        }
    }
    out
}

/// `log` alone is `Display`; `log = "display"` / `log = "debug"` pick one;
/// `None` for any other value (reported by the caller).
fn log_format(meta: &ParseNestedMeta) -> syn::Result<Option<LogFormat>> {
    if !meta.input.peek(syn::Token![=]) {
        return Ok(Some(LogFormat::Display));
    }
    let literal = meta.value()?.parse::<syn::Lit>()?;
    Ok(match &literal {
        syn::Lit::Str(text) if text.value() == "display" => Some(LogFormat::Display),
        syn::Lit::Str(text) if text.value() == "debug" => Some(LogFormat::Debug),
        _ => None,
    })
}

pub fn field_attrs(attrs: &[Attribute], errors: &mut Errors) -> FieldAttrs {
    let mut out = FieldAttrs::default();
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("context_local")) {
        let parsed = attr.parse_nested_meta(|meta| {
            let key = key_of(&meta);
            match key.as_str() {
                // #[context_local(default = expression)]
                "default" => {
                    let expr: Expr = meta.value()?.parse()?;
                    set_once(&mut out.default, expr, &meta, errors);
                }
                // #[context_local(no_inherit)]
                "no_inherit" => set_once(&mut out.no_inherit, meta.path.clone(), &meta, errors),
                // #[context_local(rename = "accessor_name")]
                "rename" => {
                    let literal: LitStr = meta.value()?.parse()?;
                    match literal.parse_with(Ident::parse_any_checked) {
                        Ok(ident) => set_once(&mut out.rename, Rename { ident, literal }, &meta, errors),
                        Err(_) => errors.push(syn::Error::new_spanned(
                            &literal,
                            "`rename` must be a valid identifier, e.g. `rename = \"user_id\"` (`r#type` for a keyword)",
                        )),
                    }
                }
                // #[context_local(log)] or #[context_local(log = "debug")]
                "log" => {
                    let format = log_format(&meta)?;
                    match format {
                        Some(format) => set_once(&mut out.log, (format, meta.path.span()), &meta, errors),
                        None => errors.push(meta.error(
                            "`log` takes no value (Display) or `log = \"debug\"` (Debug), e.g. `#[context_local(log = \"debug\")]`",
                        )),
                    }
                }
                // #[context_local(baggage)] or #[context_local(baggage = "member.key")]
                "baggage" => {
                    let key = if meta.input.peek(syn::Token![=]) { Some(meta.value()?.parse::<LitStr>()?) } else { None };
                    set_once(&mut out.baggage, Baggage { path: meta.path.clone(), key }, &meta, errors);
                }
                "scope" | "init" | "inherit" | "crate" => {
                    errors.push(
                        meta.error(format!("`{key}` is a struct attribute; put it on the struct, not on a field")),
                    );
                    skip_value(&meta)?;
                }
                _ => {
                    errors.push(meta.error(format!(
                        "unknown context_local field attribute `{key}`; expected one of: {FIELD_KEYS}"
                    )));
                    skip_value(&meta)?;
                }
            }
            Ok(())
        });
        if let Err(error) = parsed {
            errors.push(error);
        }
    }
    out
}

fn key_of(meta: &ParseNestedMeta) -> String {
    let path = &meta.path;
    quote::quote!(#path).to_string().replace(' ', "")
}

fn set_once<T>(slot: &mut Option<T>, value: T, meta: &ParseNestedMeta, errors: &mut Errors) {
    if slot.is_some() {
        let key = key_of(meta);
        errors.push(syn::Error::new_spanned(
            &meta.path,
            format!("duplicate context_local attribute `{key}`; remove one of them"),
        ));
    } else {
        *slot = Some(value);
    }
}

/// Consumes `= value` after a rejected key, so parsing can go on.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        let _: Expr = meta.value()?.parse()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        let _: proc_macro2::TokenStream = content.parse()?;
    }
    Ok(())
}

/// `Ident` parsing that accepts `r#keyword` but rejects bare keywords.
trait ParseAnyChecked {
    fn parse_any_checked(input: syn::parse::ParseStream) -> syn::Result<Ident>;
}

impl ParseAnyChecked for Ident {
    fn parse_any_checked(input: syn::parse::ParseStream) -> syn::Result<Ident> {
        let ident: Ident = input.parse()?;
        if !input.is_empty() {
            return Err(input.error("expected one identifier"));
        }
        Ok(ident)
    }
}
