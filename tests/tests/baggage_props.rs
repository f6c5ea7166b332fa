//! Properties of the baggage codec: any field values survive
//! `to_header`/`extract`, and no header string panics the parser.

use context_local::{baggage, Context, ContextLocal};
use proptest::prelude::*;

#[derive(ContextLocal)]
struct Fields {
    #[context_local(baggage)]
    text: String,
    #[context_local(baggage = "n")]
    number: i64,
    #[context_local(baggage = "c")]
    letter: char,
}

proptest! {
    #[test]
    fn any_field_values_round_trip(text in any::<String>(), number in any::<i64>(), letter in any::<char>()) {
        let header = Context::new().run(|| {
            Fields::text().set(text.clone());
            Fields::number().set(number);
            Fields::letter().set(letter);
            baggage::to_header()
        });
        let header = header.expect("three members");
        prop_assert!(header.bytes().all(|b| (0x21..=0x7E).contains(&b) && b != b'"' && b != b'\\'), "{header:?}");
        let mut context = baggage::extract([header.as_str()]);
        let back = context.run(|| (Fields::text().get(), Fields::number().get(), Fields::letter().get()));
        prop_assert_eq!(back, (Some(text), Some(number), Some(letter)));
        prop_assert_eq!(context.run(baggage::to_header), Some(header), "forwarding gives the same bytes");
    }

    #[test]
    fn arbitrary_headers_never_panic(values in prop::collection::vec(any::<String>(), 0..4)) {
        let mut context = baggage::extract(values.iter().map(String::as_str));
        let out = context.run(baggage::to_header);
        if let Some(out) = out {
            // What goes out parses again into the same thing.
            let mut again = baggage::extract([out.as_str()]);
            prop_assert_eq!(again.run(baggage::to_header), Some(out));
        }
    }

    #[test]
    fn header_like_strings_never_panic(value in "[ \\t,;=%a-z0-9A-F\\\\\"é😀]{0,64}") {
        let mut context = baggage::extract([value.as_str(), value.as_str()]);
        let _ = context.run(|| (Fields::text().get(), Fields::number().get(), baggage::to_header()));
    }
}
