//! The W3C Baggage Recommendation, clause by clause, through the public
//! `baggage::{to_header, extract}`. Each test names the clause it checks
//! (section titles of the W3C text, "Propagation format for distributed
//! context: Baggage").

use context_local::{baggage, Context, ContextLocal};

#[derive(ContextLocal)]
struct Request {
    #[context_local(baggage)]
    tenant: String,
    #[context_local(baggage = "user.id")]
    user: u64,
    #[context_local(baggage = "note")]
    note: String,
    not_sent: String,
}

/// What `to_header` gives inside a fresh context after `setup`.
fn header_after(setup: impl FnOnce()) -> Option<String> {
    Context::new().run(|| {
        setup();
        baggage::to_header()
    })
}

/// The note field's value after extracting `values`.
fn note_from(values: &[&str]) -> Option<String> {
    baggage::extract(values.iter().copied()).run(|| Request::note().get())
}

/// What `to_header` forwards after extracting `values`.
fn forwarded(values: &[&str]) -> Option<String> {
    baggage::extract(values.iter().copied()).run(baggage::to_header)
}

// § value: "Any code points outside of the baggage-octet range MUST be
// percent-encoded." baggage-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E.
#[test]
fn value_code_points_outside_baggage_octet_are_percent_encoded() {
    let every_ascii: String = (0u8..=0x7F).map(char::from).collect();
    let header = header_after(|| Request::note().set(format!("{every_ascii}é😀"))).unwrap();
    let value = header.strip_prefix("note=").unwrap();
    let mut expected = String::new();
    for byte in every_ascii.bytes().chain("é😀".bytes()) {
        let octet = matches!(byte, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E);
        if octet && byte != b'%' {
            expected.push(char::from(byte));
        } else {
            expected.push_str(&format!("%{byte:02X}"));
        }
    }
    assert_eq!(value, expected);
    assert!(value.contains("%20") && value.contains("%22") && value.contains("%2C"));
    assert!(value.contains("%3B") && value.contains("%5C") && value.ends_with("%C3%A9%F0%9F%98%80"));
}

// § value: "The percent code point (U+0025) MUST be percent-encoded."
#[test]
fn value_percent_is_always_encoded() {
    let header = header_after(|| Request::note().set("50%41".into()));
    assert_eq!(header.as_deref(), Some("note=50%2541"));
    assert_eq!(note_from(&["note=50%2541"]).as_deref(), Some("50%41"));
}

// § value: "When decoding the value, percent-encoded octet sequences that do
// not match the UTF-8 encoding scheme MUST be replaced with the replacement
// code point (U+FFFD)."
#[test]
fn value_invalid_utf8_decodes_to_replacement_character() {
    assert_eq!(note_from(&["note=a%FFb"]).as_deref(), Some("a\u{FFFD}b"));
    assert_eq!(note_from(&["note=%C3"]).as_deref(), Some("\u{FFFD}"));
    // The member is kept, and the other members with it.
    assert_eq!(baggage::extract(["note=%FF,tenant=t"]).run(|| Request::tenant().get()).as_deref(), Some("t"));
}

// § value: "A value contains a string whose character encoding MUST be UTF-8",
// percent-encoded as in RFC 3986 section 2.1 (both hex cases decode).
#[test]
fn value_percent_decoding_is_utf8_and_case_insensitive() {
    assert_eq!(note_from(&["note=caf%C3%A9%20%f0%9f%98%80"]).as_deref(), Some("café 😀"));
}

// § value: "Note, value MAY contain any number of the equal sign (=)
// characters. Parsers MUST NOT assume that the equal sign is only used to
// separate key and value."
#[test]
fn value_may_contain_equal_signs() {
    assert_eq!(note_from(&["note=a=b==c"]).as_deref(), Some("a=b==c"));
    assert_eq!(forwarded(&["other=x=y"]).as_deref(), Some("other=x=y"));
}

// § key / § value: "Leading and trailing whitespaces (OWS) are allowed and are
// not considered to be a part of the key" (value alike); OWS = *( SP / HTAB ).
#[test]
fn key_and_value_surrounding_whitespace_is_trimmed() {
    assert_eq!(note_from(&[" \tnote \t= \t hello \t"]).as_deref(), Some("hello"));
    let mut context = baggage::extract(["user.id =  7 ", "\ttenant\t=\tacme\t"]);
    assert_eq!(context.run(|| (Request::user().get(), Request::tenant().get())), (Some(7), Some("acme".into())));
}

// § Definition: key = token (RFC 7230 section 3.2.6). A member whose key is
// not a token is not valid and is skipped.
#[test]
fn key_must_be_a_token() {
    assert_eq!(forwarded(&["a b=1,c\"d=2,é=3,(x)=4,ok!#$%&'*+-.^_`|~=5"]).as_deref(), Some("ok!#$%&'*+-.^_`|~=5"));
}

// § Definition: list-member = key OWS "=" OWS value *( OWS ";" OWS property ).
// Members that do not match are skipped; the valid ones around them are kept
// (§ Mutating baggage: "it MAY remove that entry").
#[test]
fn invalid_members_are_skipped_without_losing_valid_ones() {
    let header = "a=1, no-equals ,b=has space,c=quote\"d,d=back\\slash,=novalue,e=2;,f=3;=p,g=4,,h=5";
    assert_eq!(forwarded(&[header]).as_deref(), Some("a=1,g=4,h=5"));
}

// § Definition: value = *baggage-octet, so an empty value is valid; it is the
// empty string given to `FromStr`.
#[test]
fn empty_value_is_the_empty_string() {
    assert_eq!(note_from(&["note="]).as_deref(), Some(""));
    assert_eq!(baggage::extract(["user.id="]).run(|| Request::user().get()), None, "\"\" is not a u64");
}

// § property: "Additional metadata MAY be appended to values in the form of
// property set ... The semantic of such properties is opaque to this
// specification." Properties of forwarded members go on byte for byte.
#[test]
fn properties_are_forwarded_unchanged() {
    let header = "k1=v1;property1;property2, k2 = v2 ;  pk = pv ;flag, k3=v%2C3;p=%25";
    assert_eq!(
        forwarded(&[header]).as_deref(),
        Some("k1=v1;property1;property2,k2 = v2 ;  pk = pv ;flag,k3=v%2C3;p=%25")
    );
}

// § property: a field's member may carry properties; the field still gets
// the value.
#[test]
fn a_field_member_with_properties_sets_the_field() {
    assert_eq!(note_from(&["note=hi;ttl=3;private"]).as_deref(), Some("hi"));
}

// § Header Name / Header Content: "Multiple baggage headers are allowed.
// Values can be combined in a single header according to RFC 7230."
#[test]
fn several_headers_are_one_list() {
    let mut context = baggage::extract(["tenant=acme", "user.id=7,x=1", "y=2"]);
    assert_eq!(context.run(|| (Request::tenant().get(), Request::user().get())), (Some("acme".into()), Some(7)));
    assert_eq!(context.run(baggage::to_header).as_deref(), Some("tenant=acme,user.id=7,x=1,y=2"));
}

// § Limits: "A platform MUST propagate at least 64 list-members" — and this
// one propagates at most 64: the 65th and later are dropped whole.
#[test]
fn limits_at_most_64_members_go_out() {
    let members: Vec<String> = (0..100).map(|i| format!("k{i}=v{i}")).collect();
    let header = forwarded(&[&members.join(",")]).unwrap();
    assert_eq!(header, members[..64].join(","));
}

// § Limits: "A platform MUST propagate a baggage-string of at least 8192
// bytes" — at most 8192 here, counted on the combined header, commas
// included; the first member that does not fit and every later one is
// dropped whole, never cut.
#[test]
fn limits_at_most_8192_bytes_go_out_dropping_whole_members() {
    let big = |name: &str, len: usize| format!("{name}={}", "x".repeat(len - name.len() - 1));
    // 4000 + 1 + 4000 + 1 + 191 = 8193: the third does not fit, nor the small one after it.
    let header = forwarded(&[&big("a", 4000), &big("b", 4000), &big("c", 191), "d=1"]).unwrap();
    assert_eq!(header, format!("{},{}", big("a", 4000), big("b", 4000)));
    // Exactly 8192 fits.
    let header = forwarded(&[&big("a", 4000), &big("b", 4000), &big("c", 190)]).unwrap();
    assert_eq!(header.len(), 8192);
    // Fields count toward the same limits, and go first.
    // "tenant=acme" (11) + "," + 8181 = 8193.
    let header = baggage::extract([big("a", 8181).as_str()]).run(|| {
        Request::tenant().set("acme".into());
        baggage::to_header().unwrap()
    });
    assert_eq!(header, "tenant=acme");
}

// § baggage-string: "Producers SHOULD try to produce a baggage-string without
// any list-members which duplicate the key of another list member." Each key
// goes out once: a field wins over a received member with its key.
#[test]
fn keys_go_out_once() {
    assert_eq!(forwarded(&["x=1,x=2", "x=3"]).as_deref(), Some("x=1"));
    let header = baggage::extract(["user.id=not-a-number,tenant=old"]).run(|| {
        Request::user().set(5);
        Request::tenant().set("new".into());
        baggage::to_header()
    });
    assert_eq!(header.as_deref(), Some("tenant=new,user.id=5"));
}

// § Mutating baggage: "A system receiving a baggage request header SHOULD
// send it to outgoing requests" — including members it does not understand,
// and members of its fields whose values it cannot parse.
#[test]
fn unknown_and_unparsable_members_are_forwarded() {
    let mut context = baggage::extract(["user.id=seven,vendor=x;p=1"]);
    assert_eq!(context.run(|| Request::user().get()), None, "does not parse: the field stays unset");
    assert_eq!(context.run(baggage::to_header).as_deref(), Some("user.id=seven,vendor=x;p=1"));
}

// § Mutating baggage: "Delete a key/value pair" / "Update an existing value".
#[test]
fn fields_deleted_or_updated_go_out_as_they_are_now() {
    let header = baggage::extract(["tenant=a,user.id=1,note=n"]).run(|| {
        Request::tenant().delete();
        Request::user().set(2);
        baggage::to_header()
    });
    assert_eq!(header.as_deref(), Some("user.id=2,note=n"));
}

// Order (section 8 of the project's API): fields in declaration order, then
// forwarded members in the order received; the same context gives the same
// bytes every time.
#[test]
fn order_is_stable() {
    let mut context = baggage::extract(["z=1,note=n,a=2", "user.id=3,tenant=t,m=4"]);
    let first = context.run(baggage::to_header);
    assert_eq!(first.as_deref(), Some("tenant=t,user.id=3,note=n,z=1,a=2,m=4"));
    for _ in 0..10 {
        assert_eq!(context.run(baggage::to_header), first);
    }
}

#[test]
fn nothing_to_send_is_none() {
    assert_eq!(header_after(|| Request::not_sent().set("x".into())), None);
    assert_eq!(forwarded(&["", " , ,", "bad member"]), None);
}

#[test]
fn fields_round_trip_through_a_header() {
    let header = header_after(|| {
        Request::tenant().set("a%b\\c,d;e=f g é 😀".into());
        Request::user().set(u64::MAX);
    })
    .unwrap();
    let mut context = baggage::extract([header.as_str()]);
    assert_eq!(
        context.run(|| (Request::tenant().get(), Request::user().get())),
        (Some("a%b\\c,d;e=f g é 😀".into()), Some(u64::MAX))
    );
}

#[derive(ContextLocal)]
struct Untouched {
    #[context_local(baggage = "region")]
    region: String,
    #[context_local(baggage = "shard")]
    shard: u32,
}

// API: a received member is the field's value; `is_set` runs neither `init`
// nor the binding, yet agrees with what the first read will return (a
// member whose value does not parse sets nothing).
#[test]
fn is_set_before_the_first_access_agrees_with_the_first_read() {
    let mut context = baggage::extract(["region=eu,shard=not-a-number"]);
    context.run(|| {
        assert!(Untouched::region().is_set());
        assert!(!Untouched::shard().is_set());
        assert_eq!(Untouched::region().get().as_deref(), Some("eu"));
        assert_eq!(Untouched::shard().get(), None);
        assert!(Untouched::region().is_set());
        assert!(Untouched::region().delete());
        assert!(!Untouched::region().is_set());
    });
}

fn zone_from_init() -> Zoned {
    Zoned { zone: "from-init".into() }
}

#[derive(ContextLocal)]
#[context_local(init = zone_from_init)]
struct Zoned {
    #[context_local(baggage)]
    zone: String,
}

// API: "the baggage fields that are set ... the header is byte-identical for
// the same context": a struct's `init` values are not sent from a context
// that never used the struct, whatever other contexts did.
#[test]
fn to_header_sends_no_init_values_of_a_struct_this_context_has_not_used() {
    assert_eq!(Context::new().run(|| Zoned::zone().get()).as_deref(), Some("from-init"));
    assert_eq!(Context::new().run(baggage::to_header), None);
    // A received member meant for it goes out as the field will send it,
    // before and after the first use here, and `init` does not run for it.
    let mut context = baggage::extract(["other=1,zone=%65u"]);
    assert_eq!(context.run(baggage::to_header).as_deref(), Some("zone=eu,other=1"));
    assert_eq!(context.run(|| Zoned::zone().get()).as_deref(), Some("eu"));
    assert_eq!(context.run(baggage::to_header).as_deref(), Some("zone=eu,other=1"));
}
