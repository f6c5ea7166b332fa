// The hidden items that generated code uses cannot be made to store a value
// of another type in a field's slot: a descriptor is built for one type, and
// picks how to store it itself.
use context_local::__private::{FieldDesc, StructDesc, Space};

static OWNER: StructDesc = StructDesc::new("Owner", Space::Shared, None, &[]);
static FIELD: FieldDesc<String> = FieldDesc::<u8>::shared("Owner::field", &OWNER, None);

fn main() {
    let _ = &FIELD;
}
