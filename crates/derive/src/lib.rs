//! `#[derive(TagFirstDeserialize)]` for an enum that derives `Serialize` with `#[serde(tag = "...")]`: a
//! `Deserialize` that reads the tag, when it comes first (as serde writes it), and then the variant's fields
//! straight from the input — where serde's own derive reads the whole value into its private `Content` buffer
//! first and then reads the variant again from that copy (serde-rs/serde#1922, open since 2021). Both halves cost
//! in the browser: the copy on every message, and a second instantiation of every variant's code for the buffer
//! (about a tenth of the app's wasm before this derive).
//!
//! The derive writes a private, externally tagged twin of the enum (same variants, same `#[serde]` attributes
//! but the tag), lets serde derive its `Deserialize`, and converts: serde keeps the knowledge of field names,
//! defaults, renames and unknown fields; `syncline_protocol::tag_first` feeds it the tag and the rest of the map.
//! Input in another order (the tag not first) is still read, more slowly (see there). A struct variant with one
//! `#[serde(flatten)]` field (the Kanban writes' request bodies) becomes a newtype variant of the twin around a
//! generated struct that reads its own fields as they come and hands the rest of the map to the flattened one
//! (`tag_first::flattened`), where serde's `flatten` would buffer the rest first.
//!
//! Written by hand because no maintained crate does this (serde's derive is the one to change; the PR above is
//! not merged).

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::punctuated::Punctuated;
use syn::{Attribute, Data, DeriveInput, Expr, ExprLit, Fields, Lit, Meta, Token, parse_macro_input};

#[proc_macro_derive(TagFirstDeserialize, attributes(serde))]
pub fn derive_tag_first(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(input).unwrap_or_else(syn::Error::into_compile_error).into()
}

fn expand(input: DeriveInput) -> syn::Result<proc_macro2::TokenStream> {
    let Data::Enum(data) = &input.data else {
        return Err(syn::Error::new(Span::call_site(), "TagFirstDeserialize is for internally tagged enums"));
    };
    if let Some(lifetime) = input.generics.lifetimes().next() {
        return Err(syn::Error::new_spanned(lifetime, "TagFirstDeserialize reads owned data only: no lifetimes"));
    }
    let name = &input.ident;
    let mirror = format_ident!("__TagFirst{}", name);

    // The container's serde attributes, but the tag: the twin is externally tagged.
    let mut tag = None;
    let mut bound = None;
    let mut kept = Vec::new();
    for meta in serde_metas(&input.attrs)? {
        match &meta {
            Meta::NameValue(nv) if nv.path.is_ident("tag") => tag = Some(string_of(&nv.value)?),
            Meta::NameValue(nv) if nv.path.is_ident("content") => {
                return Err(syn::Error::new_spanned(nv, "TagFirstDeserialize is for internally tagged enums"));
            }
            Meta::NameValue(nv) if nv.path.is_ident("bound") => {
                bound = Some(string_of(&nv.value)?);
                kept.push(meta);
            }
            _ => kept.push(meta),
        }
    }
    let deny_unknown_fields = kept.iter().any(|m| matches!(m, Meta::Path(p) if p.is_ident("deny_unknown_fields")));
    let Some(tag) = tag else {
        return Err(syn::Error::new_spanned(name, "TagFirstDeserialize needs #[serde(tag = \"...\")]"));
    };

    let mut variants = Vec::new();
    let mut arms = Vec::new();
    let mut helpers = Vec::new();
    for variant in &data.variants {
        let v = &variant.ident;
        let attrs = only_serde(&variant.attrs);
        let (fields, arm) = match &variant.fields {
            Fields::Named(named) if named.named.iter().any(is_flatten) => {
                if !input.generics.params.is_empty() {
                    return Err(syn::Error::new_spanned(
                        variant,
                        "a flattened field in a generic enum is not supported",
                    ));
                }
                let (flat, support) = flattened_variant(name, variant, named, deny_unknown_fields)?;
                helpers.push(support);
                let names: Vec<_> = named.named.iter().map(|f| f.ident.clone().expect("named")).collect();
                (quote! { (#flat) }, quote! { #mirror::#v(#flat { #(#names),* }) => #name::#v { #(#names),* } })
            }
            Fields::Named(named) => {
                let names: Vec<_> = named.named.iter().map(|f| f.ident.clone().expect("named")).collect();
                let fields = named.named.iter().map(|f| {
                    let (ident, ty, attrs) = (&f.ident, &f.ty, only_serde(&f.attrs));
                    quote! { #(#attrs)* #ident: #ty }
                });
                (quote! { { #(#fields),* } }, quote! { #mirror::#v { #(#names),* } => #name::#v { #(#names),* } })
            }
            Fields::Unnamed(unnamed) => {
                let names: Vec<_> = (0..unnamed.unnamed.len()).map(|i| format_ident!("__f{}", i)).collect();
                let fields = unnamed.unnamed.iter().map(|f| {
                    let (ty, attrs) = (&f.ty, only_serde(&f.attrs));
                    quote! { #(#attrs)* #ty }
                });
                (quote! { ( #(#fields),* ) }, quote! { #mirror::#v ( #(#names),* ) => #name::#v ( #(#names),* ) })
            }
            Fields::Unit => (quote! {}, quote! { #mirror::#v => #name::#v }),
        };
        variants.push(quote! { #(#attrs)* #v #fields });
        arms.push(arm);
    }

    let (_, type_generics, where_clause) = input.generics.split_for_impl();
    // The impl's bounds: serde's rule — `bound = "..."` if given, else each type parameter deserializable.
    let mut predicates: Vec<proc_macro2::TokenStream> =
        where_clause.map(|w| w.predicates.iter().map(|p| quote! { #p }).collect()).unwrap_or_default();
    match &bound {
        Some(bound) if !bound.trim().is_empty() => {
            let parsed: Punctuated<syn::WherePredicate, Token![,]> =
                syn::parse::Parser::parse_str(Punctuated::parse_terminated, bound)?;
            predicates.extend(parsed.iter().map(|p| quote! { #p }));
        }
        Some(_) => {}
        None => predicates.extend(input.generics.type_params().map(|p| {
            let p = &p.ident;
            quote! { #p: ::serde::de::DeserializeOwned }
        })),
    }
    let params: Vec<_> = input
        .generics
        .params
        .iter()
        .map(|p| match p {
            syn::GenericParam::Type(t) => {
                let (ident, bounds) = (&t.ident, &t.bounds);
                if bounds.is_empty() {
                    quote! { #ident }
                } else {
                    quote! { #ident: #bounds }
                }
            }
            other => quote! { #other },
        })
        .collect();
    let name_str = name.to_string();
    let generics = &input.generics.params;
    let container = (!kept.is_empty()).then(|| quote! { #[serde(#(#kept),*)] });

    Ok(quote! {
        const _: () = {
            #(#helpers)*

            #[derive(::serde::Deserialize)]
            #container
            #[allow(non_camel_case_types, clippy::large_enum_variant)]
            enum #mirror<#generics> #where_clause { #(#variants),* }

            impl<#(#params),*> ::core::convert::From<#mirror #type_generics> for #name #type_generics #where_clause {
                fn from(twin: #mirror #type_generics) -> Self {
                    match twin { #(#arms),* }
                }
            }

            impl<'de, #(#params),*> ::serde::Deserialize<'de> for #name #type_generics where #(#predicates),* {
                fn deserialize<__D: ::serde::Deserializer<'de>>(deserializer: __D) -> ::core::result::Result<Self, __D::Error> {
                    ::syncline_protocol::tag_first::deserialize::<__D, #mirror #type_generics>(deserializer, #tag, #name_str)
                        .map(::core::convert::From::from)
                }
            }
        };
    })
}

fn is_flatten(field: &syn::Field) -> bool {
    serde_metas(&field.attrs)
        .is_ok_and(|metas| metas.iter().any(|m| matches!(m, Meta::Path(p) if p.is_ident("flatten"))))
}

/// A struct variant with one `#[serde(flatten)]` field, for the twin: a newtype variant around a struct that reads
/// its own fields as they come and gives the rest of the map to the flattened one (`tag_first::flattened`), where
/// serde's derive would buffer the rest first. Own fields are plain (no serde attributes, not `Option`): that is
/// what the enums here need, and anything else is refused at compile time rather than read differently.
fn flattened_variant(
    name: &syn::Ident,
    variant: &syn::Variant,
    named: &syn::FieldsNamed,
    deny_unknown_fields: bool,
) -> syn::Result<(syn::Ident, proc_macro2::TokenStream)> {
    let flat = format_ident!("__TagFirst{}{}", name, variant.ident);
    let own = format_ident!("__TagFirst{}{}Own", name, variant.ident);
    let (flattened, own_fields): (Vec<_>, Vec<_>) = named.named.iter().partition(|f| is_flatten(f));
    let [flattened] = flattened.as_slice() else {
        return Err(syn::Error::new_spanned(variant, "one flattened field per variant is supported"));
    };
    for field in &own_fields {
        let is_option =
            matches!(&field.ty, syn::Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "Option"));
        if !only_serde(&field.attrs).is_empty() || is_option {
            return Err(syn::Error::new_spanned(
                field,
                "beside a flattened field, only plain required fields are supported (no serde attributes, no Option)",
            ));
        }
    }
    let (body, body_ty) = (&flattened.ident, &flattened.ty);
    let idents: Vec<_> = own_fields.iter().map(|f| f.ident.clone().expect("named")).collect();
    let keys: Vec<_> = idents.iter().map(|i| i.to_string()).collect();
    let types: Vec<_> = own_fields.iter().map(|f| &f.ty).collect();
    Ok((
        flat.clone(),
        quote! {
            #[allow(non_camel_case_types)]
            struct #flat { #(#idents: #types,)* #body: #body_ty }

            #[derive(Default)]
            #[allow(non_camel_case_types)]
            struct #own { #(#idents: ::core::option::Option<#types>),* }

            impl<'de> ::syncline_protocol::tag_first::OwnFields<'de> for #own {
                fn take<__A: ::serde::de::MapAccess<'de>>(&mut self, key: &str, map: &mut __A) -> ::core::result::Result<bool, __A::Error> {
                    match key {
                        #(#keys => ::syncline_protocol::tag_first::take_once(&mut self.#idents, #keys, map),)*
                        _ => ::core::result::Result::Ok(false),
                    }
                }
            }

            impl<'de> ::serde::Deserialize<'de> for #flat {
                fn deserialize<__D: ::serde::Deserializer<'de>>(deserializer: __D) -> ::core::result::Result<Self, __D::Error> {
                    let (own, #body) = ::syncline_protocol::tag_first::flattened::<__D, #own, #body_ty>(deserializer, #deny_unknown_fields)?;
                    ::core::result::Result::Ok(#flat {
                        #(#idents: own.#idents.ok_or_else(|| <__D::Error as ::serde::de::Error>::missing_field(#keys))?,)*
                        #body,
                    })
                }
            }
        },
    ))
}

/// The metas of every `#[serde(...)]` attribute.
fn serde_metas(attrs: &[Attribute]) -> syn::Result<Vec<Meta>> {
    let mut metas = Vec::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        metas.extend(attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)?);
    }
    Ok(metas)
}

/// Only the serde attributes (docs and other derives' attributes stay on the real enum).
fn only_serde(attrs: &[Attribute]) -> Vec<&Attribute> {
    attrs.iter().filter(|a| a.path().is_ident("serde")).collect()
}

fn string_of(expr: &Expr) -> syn::Result<String> {
    match expr {
        Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => Ok(s.value()),
        other => Err(syn::Error::new_spanned(other, "expected a string")),
    }
}
