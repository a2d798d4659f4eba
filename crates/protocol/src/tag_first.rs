//! Reading internally tagged enums (`{"type": "changes", ...}`) without a second pass: the runtime half of
//! `#[derive(TagFirstDeserialize)]` (crate `syncline-derive`, which says why it exists).
//!
//! serde writes an internally tagged enum's tag first. When it comes first, [`deserialize`] reads it, then hands
//! the rest of the same map to the enum's externally tagged twin as the variant's fields: nothing is copied and the
//! variant's code is the one that reads JSON. When it does not (a hand-written request, a `serde_json::Value`
//! with its keys sorted), the entries are gathered into a JSON object, the tag taken out, and the object read
//! again from text through the same code — slower, never wrong. (Re-reading from text rather than from the
//! gathered value keeps this path from adding a second copy of every variant's code to the browser's wasm.)

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserializer;
use serde::de::value::{CowStrDeserializer, MapAccessDeserializer};
use serde::de::{
    DeserializeOwned, DeserializeSeed, EnumAccess, Error, IgnoredAny, IntoDeserializer, MapAccess, VariantAccess,
    Visitor,
};

/// Reads a `T` — an enum's externally tagged twin — from an internally tagged map whose tag is named `tag`.
/// `name` is the enum's, for error messages.
pub fn deserialize<'de, D, T>(deserializer: D, tag: &'static str, name: &'static str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned,
{
    deserializer.deserialize_map(TagFirst { tag, name, marker: PhantomData })
}

struct TagFirst<T> {
    tag: &'static str,
    name: &'static str,
    marker: PhantomData<fn() -> T>,
}

impl<'de, T: DeserializeOwned> Visitor<'de> for TagFirst<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "internally tagged enum {}", self.name)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let Some(first) = map.next_key_seed(Text)? else { return Err(A::Error::missing_field(self.tag)) };
        if first == self.tag {
            let variant = map.next_value_seed(Text)?;
            return T::deserialize(Tagged { variant, map });
        }
        let (variant, rest) = gather(first, map, self.tag)?;
        reread(&variant, &rest).map_err(A::Error::custom)
    }
}

/// The slow path's first half (generic over the input only, not over the enum): every entry but the tag, as a
/// JSON object's text, and the tag's value.
fn gather<'de, A: MapAccess<'de>>(
    first: Cow<'de, str>,
    mut map: A,
    tag: &'static str,
) -> Result<(String, String), A::Error> {
    let mut rest = serde_json::Map::new();
    rest.insert(first.into_owned(), map.next_value()?);
    let mut variant = None;
    while let Some(key) = map.next_key_seed(Text)? {
        if key == tag {
            variant = Some(map.next_value_seed(Text)?.into_owned());
        } else {
            rest.insert(key.into_owned(), map.next_value()?);
        }
    }
    let variant = variant.ok_or_else(|| A::Error::missing_field(tag))?;
    Ok((variant, serde_json::Value::Object(rest).to_string()))
}

/// The slow path's second half: `rest` (a JSON object) read as `variant`'s fields, through the code the fast path
/// uses for JSON text.
fn reread<T: DeserializeOwned>(variant: &str, rest: &str) -> Result<T, serde_json::Error> {
    struct Rest<'v, T> {
        variant: &'v str,
        marker: PhantomData<fn() -> T>,
    }
    impl<'de, T: DeserializeOwned> Visitor<'de> for Rest<'_, T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            T::deserialize(Tagged { variant: Cow::Owned(self.variant.to_owned()), map })
        }
    }
    let mut de = serde_json::Deserializer::from_str(rest);
    let value = de.deserialize_map(Rest { variant, marker: PhantomData })?;
    de.end()?;
    Ok(value)
}

/// A struct's own fields, read as they come, beside one flattened field that reads the rest of the map
/// ([`flattened`]).
pub trait OwnFields<'de>: Default {
    /// Reads `key`'s value if it names one of the own fields; false if it is the flattened field's.
    fn take<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error>;
}

/// For [`OwnFields::take`]: reads a field's value into its slot, once.
pub fn take_once<'de, T: serde::Deserialize<'de>, A: MapAccess<'de>>(
    slot: &mut Option<T>,
    name: &'static str,
    map: &mut A,
) -> Result<bool, A::Error> {
    if slot.is_some() {
        return Err(A::Error::duplicate_field(name));
    }
    *slot = Some(map.next_value()?);
    Ok(true)
}

/// Reads a map as a struct's own fields `O` and one `#[serde(flatten)]` field `F`: own fields are read as they
/// come; the first other key starts `F`'s fields, which `F` reads from the same map (own fields after it are
/// taken out of its way). serde's `flatten` buffers the other entries first and reads `F` from the copy.
/// As there, a struct `F` is shown only the keys it names; any other key is refused if `deny_unknown_fields`,
/// else skipped.
pub fn flattened<'de, D, O, F>(deserializer: D, deny_unknown_fields: bool) -> Result<(O, F), D::Error>
where
    D: Deserializer<'de>,
    O: OwnFields<'de>,
    F: serde::Deserialize<'de>,
{
    deserializer.deserialize_map(Flattened { deny_unknown_fields, marker: PhantomData })
}

struct Flattened<O, F> {
    deny_unknown_fields: bool,
    marker: PhantomData<fn() -> (O, F)>,
}

impl<'de, O: OwnFields<'de>, F: serde::Deserialize<'de>> Visitor<'de> for Flattened<O, F> {
    type Value = (O, F);

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(O, F), A::Error> {
        let mut own = O::default();
        let first = loop {
            match map.next_key_seed(Text)? {
                Some(key) if own.take(&key, &mut map)? => {}
                other => break other,
            }
        };
        let rest = F::deserialize(Rest {
            first,
            own: &mut own,
            map: &mut map,
            fields: None,
            deny_unknown_fields: self.deny_unknown_fields,
        })?;
        Ok((own, rest))
    }
}

/// The rest of a map as the flattened field sees it: from the first key that is not an own field, without the
/// own fields.
struct Rest<'a, 'de, O, A> {
    first: Option<Cow<'de, str>>,
    own: &'a mut O,
    map: &'a mut A,
    /// The fields of a struct `F` (known once it asks for a struct).
    fields: Option<&'static [&'static str]>,
    deny_unknown_fields: bool,
}

impl<'de, O: OwnFields<'de>, A: MapAccess<'de>> Deserializer<'de> for Rest<'_, 'de, O, A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_map(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.fields = Some(fields);
        visitor.visit_map(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

impl<'de, O: OwnFields<'de>, A: MapAccess<'de>> MapAccess<'de> for Rest<'_, 'de, O, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        let mut next = self.first.take();
        loop {
            let key = match next.take() {
                Some(key) => key,
                None => match self.map.next_key_seed(Text)? {
                    Some(key) if self.own.take(&key, self.map)? => continue,
                    Some(key) => key,
                    None => return Ok(None),
                },
            };
            match self.fields {
                Some(fields) if !fields.contains(&&*key) => {
                    if self.deny_unknown_fields {
                        return Err(A::Error::unknown_field(&key, fields));
                    }
                    self.map.next_value::<IgnoredAny>()?;
                }
                _ => {
                    let key: CowStrDeserializer<'de, A::Error> = key.into_deserializer();
                    return seed.deserialize(key).map(Some);
                }
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// A string, borrowed from the input when it can be (a key, a tag's value).
struct Text;

impl<'de> DeserializeSeed<'de> for Text {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Text {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: Error>(self, s: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E: Error>(self, s: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s.to_owned()))
    }

    fn visit_string<E: Error>(self, s: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s))
    }
}

/// The tag's value and the rest of the map, as the externally tagged twin expects an enum: the variant's name,
/// then its content.
struct Tagged<'de, A> {
    variant: Cow<'de, str>,
    map: A,
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for Tagged<'de, A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de, A: MapAccess<'de>> EnumAccess<'de> for Tagged<'de, A> {
    type Error = A::Error;
    type Variant = VariantFields<A>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, VariantFields<A>), A::Error> {
        let name: CowStrDeserializer<'de, A::Error> = self.variant.into_deserializer();
        Ok((seed.deserialize(name)?, VariantFields(self.map)))
    }
}

/// The rest of the map, read as the variant's content.
struct VariantFields<A>(A);

impl<'de, A: MapAccess<'de>> VariantAccess<'de> for VariantFields<A> {
    type Error = A::Error;

    fn unit_variant(mut self) -> Result<(), A::Error> {
        // As serde's derive does for a unit variant: other entries are ignored.
        while self.0.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        seed.deserialize(MapAccessDeserializer::new(self.0))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, A::Error> {
        Err(A::Error::custom("an internally tagged enum has no tuple variants"))
    }

    fn struct_variant<V: Visitor<'de>>(self, _: &'static [&'static str], visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_map(self.0)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    /// The same enum twice: serde's derive (the reference) and the tag-first one.
    macro_rules! twins {
        ($($derive:path => $name:ident),*) => {$(
            #[derive(Debug, Clone, PartialEq, Serialize, $derive)]
            #[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
            enum $name {
                Unit,
                Struct {
                    a: u32,
                    #[serde(default)]
                    b: Option<String>,
                    #[serde(rename = "see")]
                    c: Vec<u8>,
                },
                Newtype(Inner),
                #[serde(rename = "renamed")]
                Other { x: bool },
                Flat {
                    id: u32,
                    #[serde(flatten)]
                    body: Body,
                },
            }
        )*};
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Body {
        title: String,
        #[serde(default)]
        n: Option<i64>,
    }

    /// Without `deny_unknown_fields`: a flattened struct's unknown keys are skipped, as serde skips them.
    macro_rules! lenient_twins {
        ($($derive:path => $name:ident),*) => {$(
            #[derive(Debug, Clone, PartialEq, Serialize, $derive)]
            #[serde(tag = "type", rename_all = "snake_case")]
            enum $name {
                Flat {
                    id: u32,
                    #[serde(flatten)]
                    body: Body,
                },
            }
        )*};
    }
    lenient_twins!(serde::Deserialize => LenientReference, syncline_derive::TagFirstDeserialize => LenientTagFirst);

    #[test]
    fn a_flattened_field_reads_as_serde_reads_it() {
        for json in [
            r#"{"type":"flat","id":1,"title":"t"}"#,
            r#"{"type":"flat","title":"t","id":1,"n":3}"#,
            r#"{"id":1,"title":"t","type":"flat"}"#,
            r#"{"type":"flat","id":1,"title":"t","z":{"deep":[1]}}"#,
            r#"{"type":"flat","z":0,"id":1,"title":"t"}"#,
        ] {
            let reference = serde_json::from_str::<LenientReference>(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            let ours = serde_json::from_str::<LenientTagFirst>(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(json!(reference), json!(ours), "{json}");
        }
        for json in [
            r#"{"type":"flat","id":1}"#,
            r#"{"type":"flat","title":"t"}"#,
            r#"{"type":"flat","id":1,"id":2,"title":"t"}"#,
        ] {
            assert!(serde_json::from_str::<LenientReference>(json).is_err(), "serde reads {json}");
            assert!(serde_json::from_str::<LenientTagFirst>(json).is_err(), "tag-first reads {json}");
        }
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Inner {
        n: i64,
        #[serde(default)]
        s: String,
    }

    twins!(serde::Deserialize => Reference, syncline_derive::TagFirstDeserialize => TagFirst);

    fn both(json: &str) -> (Result<Reference, String>, Result<TagFirst, String>) {
        (
            serde_json::from_str::<Reference>(json).map_err(|e| e.to_string()),
            serde_json::from_str::<TagFirst>(json).map_err(|e| e.to_string()),
        )
    }

    #[test]
    fn reads_what_serde_reads_in_any_order() {
        let cases = [
            r#"{"type":"unit"}"#,
            r#"{"type":"unit","extra":1}"#,
            r#"{"extra":[1,{"y":2}],"type":"unit"}"#,
            r#"{"type":"struct","a":1,"see":[1,2]}"#,
            r#"{"type":"struct","a":1,"b":"x","see":[]}"#,
            r#"{"a":1,"type":"struct","see":[3]}"#,
            r#"{"see":[3],"b":null,"a":7,"type":"struct"}"#,
            r#"{"type":"newtype","n":-3}"#,
            r#"{"n":-3,"s":"é\"x","type":"newtype"}"#,
            r#"{"type":"renamed","x":true}"#,
            r#"{"x":false,"type":"renamed"}"#,
            r#"{"type":"flat","id":1,"title":"t"}"#,
            r#"{"type":"flat","title":"t","n":-1,"id":1}"#,
            r#"{"title":"t","id":1,"type":"flat"}"#,
        ];
        for json in cases {
            let (reference, tag_first) = both(json);
            let reference = reference.unwrap_or_else(|e| panic!("{json}: {e}"));
            let tag_first = tag_first.unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(json!(reference), json!(tag_first), "{json}");
        }
    }

    #[test]
    fn refuses_what_serde_refuses() {
        let cases = [
            r#"{}"#,
            r#"{"a":1}"#,
            r#"[]"#,
            r#""unit""#,
            r#"{"type":"nope"}"#,
            r#"{"type":7}"#,
            r#"{"a":1,"type":"nope"}"#,
            r#"{"type":"struct","see":[]}"#,
            r#"{"type":"struct","a":1,"see":[],"z":0}"#,
            r#"{"z":0,"type":"struct","a":1,"see":[]}"#,
            r#"{"type":"struct","a":"1","see":[]}"#,
            r#"{"type":"newtype","s":"x"}"#,
            r#"{"type":"renamed"}"#,
            r#"{"type":"other","x":true}"#,
            r#"{"type":"flat","id":1}"#,
            r#"{"type":"flat","title":"t"}"#,
            r#"{"type":"flat","id":1,"title":"t","z":0}"#,
            r#"{"type":"flat","z":0,"id":1,"title":"t"}"#,
            r#"{"type":"flat","id":1,"id":2,"title":"t"}"#,
            r#"{"type":"flat","id":1,"title":"t","title":"u"}"#,
        ];
        for json in cases {
            let (reference, tag_first) = both(json);
            assert!(reference.is_err(), "serde reads {json}");
            let error = tag_first.err().unwrap_or_else(|| panic!("tag-first reads {json}"));
            assert!(!error.is_empty());
        }
        // The messages say what serde's say where it matters to a client: which variant, which field.
        let (_, e) = both(r#"{"type":"nope"}"#);
        assert!(e.unwrap_err().contains("unknown variant `nope`"));
        let (_, e) = both(r#"{"type":"struct","see":[]}"#);
        assert!(e.unwrap_err().contains("missing field `a`"));
        let (_, e) = both(r#"{"a":1}"#);
        assert!(e.unwrap_err().contains("missing field `type`"));
    }

    #[test]
    fn round_trips_through_values_whose_keys_are_sorted() {
        for value in [
            TagFirst::Unit,
            TagFirst::Struct { a: 9, b: Some("b".into()), c: vec![1] },
            TagFirst::Newtype(Inner { n: 1, s: "s".into() }),
            TagFirst::Other { x: true },
            TagFirst::Flat { id: 3, body: Body { title: "t".into(), n: Some(2) } },
        ] {
            let text = serde_json::to_string(&value).unwrap();
            assert!(text.starts_with(r#"{"type":"#), "{text}");
            assert_eq!(serde_json::from_str::<TagFirst>(&text).unwrap(), value);
            // A `Value` sorts its keys: "a" comes before "type".
            assert_eq!(serde_json::from_value::<TagFirst>(serde_json::to_value(&value).unwrap()).unwrap(), value);
        }
    }
}
