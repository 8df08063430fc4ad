//! JSON decoding with the form decoder's limits applied while the tree is built: depth,
//! scalars and containers are counted node by node, so a nesting or width bomb stops at the
//! first node past a limit instead of being allocated whole and measured afterwards.

use super::php_form::{MAX_CONTAINERS, MAX_DEPTH, MAX_FIELDS};
use super::ParseError;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

#[derive(Default)]
struct Budget {
    scalars: usize,
    containers: usize,
    /// Which limit stopped the decoder (serde's error type carries only text).
    exceeded: Option<ParseError>,
}

/// One node to build, at `depth` (the top-level container is depth 1).
struct Node<'b> {
    budget: &'b mut Budget,
    depth: usize,
}

impl Node<'_> {
    fn child(&mut self) -> Node<'_> {
        Node {
            budget: self.budget,
            depth: self.depth + 1,
        }
    }

    fn scalar<E: serde::de::Error>(mut self, value: Value) -> Result<Value, E> {
        self.budget.scalars += 1;
        if self.budget.scalars > MAX_FIELDS {
            return Err(self.stop(ParseError::TooManyFields));
        }
        Ok(value)
    }

    fn container<E: serde::de::Error>(&mut self) -> Result<(), E> {
        if self.depth > MAX_DEPTH {
            return Err(self.stop(ParseError::TooDeep));
        }
        self.budget.containers += 1;
        if self.budget.containers > MAX_CONTAINERS {
            return Err(self.stop(ParseError::TooManyContainers));
        }
        Ok(())
    }

    fn stop<E: serde::de::Error>(&mut self, why: ParseError) -> E {
        let error = E::custom(&why);
        self.budget.exceeded = Some(why);
        error
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        self.scalar(Value::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        self.scalar(Value::from(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        self.scalar(Value::from(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        let number = serde_json::Number::from_f64(v).ok_or_else(|| E::custom("not a number"))?;
        self.scalar(Value::Number(number))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        self.scalar(Value::String(v.to_string()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        self.scalar(Value::String(v))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.scalar(Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        self.scalar(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        self.container()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self.child())? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        self.container()?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(self.child())?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// A JSON body as a `Value`, or the first limit it broke, or `InvalidJson`.
pub(super) fn from_slice(body: &[u8]) -> Result<Value, ParseError> {
    let mut budget = Budget::default();
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let root = Node {
        budget: &mut budget,
        depth: 1,
    };
    let parsed = root
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    match parsed {
        Ok(value) => Ok(value),
        Err(_) => Err(budget.exceeded.take().unwrap_or(ParseError::InvalidJson)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_documents_decode_as_serde_json_does() {
        let text = r#"{"a":[1,2.5,"x",null,true,{"b":{}}],"c":-3,"d":"é"}"#;
        let expected: Value = serde_json::from_str(text).unwrap();
        assert_eq!(from_slice(text.as_bytes()).unwrap(), expected);
        assert_eq!(from_slice(b"{} x"), Err(ParseError::InvalidJson));
        assert_eq!(from_slice(b"{\"a\":"), Err(ParseError::InvalidJson));
    }

    #[test]
    fn bombs_stop_at_the_first_node_past_a_limit() {
        let containers = format!("[{}{{}}]", "{},".repeat(MAX_CONTAINERS));
        assert_eq!(
            from_slice(containers.as_bytes()),
            Err(ParseError::TooManyContainers)
        );
        let nested = format!(
            "[{}]",
            vec![r#"{"a":{"a":{"a":{}}}}"#; MAX_CONTAINERS / 4 + 1].join(",")
        );
        assert_eq!(
            from_slice(nested.as_bytes()),
            Err(ParseError::TooManyContainers)
        );
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(from_slice(deep.as_bytes()), Err(ParseError::TooDeep));
        let wide = format!("[{}1]", "1,".repeat(MAX_FIELDS));
        assert_eq!(from_slice(wide.as_bytes()), Err(ParseError::TooManyFields));
    }
}
