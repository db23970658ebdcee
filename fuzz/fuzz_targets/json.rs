//! Any bytes as an event's JSON text: the server's own reader against serde_json.
//! Invariants: no panic; `json::validate` takes exactly what serde_json parses into a
//! `Value`, except text with a key serde_json reads specially (`json::RESERVED_KEY`), which
//! it refuses; where `walk` succeeds, its fields are the tree's flattened fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mamori_model::json;
use mamori_model::walk::{Item, Leaf, Next, Scratch, walk};
use mamori_model::{Event, Shape};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let tree = serde_json::from_slice::<Value>(data);
    match json::validate(data) {
        Err(e) if e.what == json::RESERVED_KEY => return,
        checked => assert_eq!(checked.is_ok(), tree.is_ok()),
    }
    let mut walked = Vec::new();
    let ok = walk(data, &mut Scratch::default(), &mut |name, leaf| {
        let one = |i: &Item<'_>| match i {
            Item::Str(s) => Value::String(s.to_string()),
            Item::Num(n) => Value::Number(n.clone()),
            Item::Bool(b) => Value::Bool(*b),
            Item::Null => Value::Null,
        };
        match leaf {
            Leaf::Object => {}
            Leaf::One(i) => walked.push((name.to_string(), one(&i))),
            Leaf::List(items) => {
                walked.push((name.to_string(), Value::Array(items.iter().map(one).collect())))
            }
        }
        Next::Go
    });
    if ok.is_ok() {
        let event = Event::with_shape(tree.expect("walked, so JSON"), Shape::Ecs);
        let mut want = Vec::new();
        event.for_each_field(&mut |k, v| want.push((k.to_string(), v.clone())));
        assert_eq!(walked, want);
    }
});
