//! The derive's options, and that its expansion is lint-clean in a strict
//! crate (missing docs, unused qualifications, unsafe code, clippy pedantic).
#![deny(missing_docs, unused_qualifications, warnings)]
#![forbid(unsafe_code)]
#![deny(clippy::pedantic)]

use context_local::{Context, ContextLocal};

/// Public fields give public accessors; private ones private accessors.
pub mod model {
    use context_local::ContextLocal;

    /// A request's context.
    #[derive(ContextLocal, Default)]
    #[context_local(init)]
    pub struct Request {
        /// The id, readable from other modules.
        #[context_local(log)]
        pub id: u64,
        /// A keyword-named field.
        #[context_local(log = "debug")]
        pub r#type: String,
        /// Renamed accessor.
        #[context_local(rename = "user_id")]
        pub user: Option<u64>,
        /// Travels as W3C Baggage; `init` sets it first.
        #[context_local(baggage = "tenant.id")]
        pub tenant: String,
        secret: u32,
    }

    /// Reads the private field through its accessor, inside the module.
    #[must_use]
    pub fn secret_plus(n: u32) -> u32 {
        Request::secret().get().unwrap_or_default() + n
    }
}

mod reexport {
    pub use context_local as runtime;
}

/// Uses the runtime through a re-export, as a facade crate would.
#[derive(ContextLocal)]
#[context_local(crate = reexport::runtime)]
struct ThroughReexport {
    value: u8,
    #[context_local(baggage)]
    r#region: String,
}

#[test]
fn options_work() {
    use model::Request;
    Context::new().run(|| {
        assert_eq!(Request::id().get(), Some(0), "bare `init` is Default::default");
        Request::r#type().set("json".into());
        assert_eq!(Request::r#type().name(), "Request::type");
        Request::user_id().set(Some(3));
        assert_eq!(Request::user_id().name(), "Request::user_id");
        assert_eq!(model::secret_plus(1), 1);
        ThroughReexport::value().set(4);
        assert_eq!(ThroughReexport::value().get(), Some(4));
        // `log` fields, keyed without `r#`: Display and Debug.
        let logged = context_local::log_fields();
        assert!(logged.contains(&("id", "0".to_string())), "{logged:?}");
        assert!(logged.contains(&("type", "\"json\"".to_string())), "{logged:?}");
    });
}

#[test]
fn accessors_are_const() {
    const ID: context_local::Field<u64> = model::Request::id();
    Context::new().run(|| {
        ID.set(9);
        assert_eq!(model::Request::id().get(), Some(9));
    });
}

#[test]
fn baggage_members_bind_over_init_and_through_a_reexport() {
    let mut context = context_local::baggage::extract(["tenant.id=t-1, region=eu"]);
    context.run(|| {
        assert_eq!(model::Request::id().get(), Some(0), "`init` ran");
        assert_eq!(model::Request::tenant().get().as_deref(), Some("t-1"), "the member wins over `init`");
        assert_eq!(ThroughReexport::region().get().as_deref(), Some("eu"), "key without `r#`");
    });
}
