//! Generated `#[derive(ContextLocal)]` inputs for the derive's fuzz-style
//! tests: random names (raw keywords and non-ASCII included), field types,
//! and attributes, valid or broken. Shared by the derive's unit test (never a
//! panic) and `tests/compile/tests/derive_fuzz.rs` (the valid ones compile and work).
//! Deterministic: a seed gives the same definitions everywhere.

#![allow(dead_code)]

/// A small xorshift generator: no dependency, same sequence on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A field type, a value of it, and what it supports.
pub struct Ty {
    pub name: &'static str,
    pub value: &'static str,
    /// `Clone + Send + Sync`: may be an inherited task-scoped field.
    pub shared: bool,
    /// `Send`: may be a task-scoped field at all.
    pub send: bool,
    pub display: bool,
    pub default: bool,
}

pub const TYPES: &[Ty] = &[
    Ty { name: "u32", value: "7", shared: true, send: true, display: true, default: true },
    Ty { name: "String", value: "String::from(\"v\")", shared: true, send: true, display: true, default: true },
    Ty { name: "Option<u64>", value: "Some(3)", shared: true, send: true, display: false, default: true },
    Ty {
        name: "Vec<String>",
        value: "vec![String::from(\"a\")]",
        shared: true,
        send: true,
        display: false,
        default: true,
    },
    Ty { name: "(u8, u16)", value: "(1, 2)", shared: true, send: true, display: false, default: true },
    Ty { name: "[u8; 4]", value: "[1, 2, 3, 4]", shared: true, send: true, display: false, default: true },
    Ty { name: "bool", value: "true", shared: true, send: true, display: true, default: true },
    Ty { name: "char", value: "'c'", shared: true, send: true, display: true, default: true },
    Ty { name: "&'static str", value: "\"lit\"", shared: true, send: true, display: true, default: true },
    Ty { name: "Box<u32>", value: "Box::new(5)", shared: true, send: true, display: true, default: true },
    Ty {
        name: "std::sync::Arc<std::sync::Mutex<u8>>",
        value: "std::sync::Arc::new(std::sync::Mutex::new(1))",
        shared: true,
        send: true,
        display: false,
        default: true,
    },
    Ty {
        name: "std::rc::Rc<u8>",
        value: "std::rc::Rc::new(1)",
        shared: false,
        send: false,
        display: true,
        default: true,
    },
    Ty {
        name: "std::cell::Cell<u8>",
        value: "std::cell::Cell::new(1)",
        shared: false,
        send: true,
        display: false,
        default: true,
    },
];

const NAMES: &[&str] = &["r#type", "r#match", "r#fn", "café", "_private", "id", "user_id", "x1"];

/// One generated field: its accessor name and its type.
pub struct GenField {
    pub accessor: String,
    pub ty: &'static Ty,
}

/// A generated struct definition.
pub struct Definition {
    pub name: String,
    pub source: String,
    /// Built only from valid choices: must be accepted and compile.
    pub valid: bool,
    pub thread_scope: bool,
    pub fields: Vec<GenField>,
}

/// Generates definition number `n`; `valid_only` leaves out the broken
/// choices.
pub fn definition(rng: &mut Rng, n: usize, valid_only: bool) -> Definition {
    let name = format!("S{n}");
    let thread_scope = rng.chance(30);
    let inherit_false = !thread_scope && rng.chance(15);
    let mut valid = true;
    let mut struct_attrs = Vec::new();
    if thread_scope {
        struct_attrs.push("scope = \"thread\"".to_string());
    } else if rng.chance(30) {
        struct_attrs.push("scope = \"task\"".to_string());
    }
    if inherit_false {
        struct_attrs.push("inherit = false".to_string());
    }
    let count = 1 + rng.below(5);
    let mut used = Vec::new();
    let mut fields = Vec::new();
    let mut field_lines = Vec::new();
    let mut all_default = true;
    for i in 0..count {
        let ty = loop {
            let ty = rng.pick(TYPES);
            if thread_scope || ty.send {
                break ty;
            }
        };
        let base = *rng.pick(NAMES);
        let ident = if used.contains(&base) { format!("f{i}") } else { base.to_string() };
        used.push(base);
        let mut attrs = Vec::new();
        let mut accessor = ident.clone();
        let inherited = !thread_scope && !inherit_false;
        let no_inherit = inherited && (!ty.shared || rng.chance(20));
        if no_inherit {
            attrs.push("no_inherit".to_string());
        }
        if rng.chance(20) {
            attrs.push(format!("default = {}", ty.value));
        }
        if rng.chance(15) {
            accessor = format!("renamed_{i}");
            attrs.push(format!("rename = \"{accessor}\""));
        }
        if rng.chance(20) {
            attrs.push(if ty.display && rng.chance(50) { "log".to_string() } else { "log = \"debug\"".to_string() });
        }
        if ty.name.contains("Cell") || ty.name.contains("Mutex") {
            attrs.retain(|a| !a.starts_with("log"));
        }
        all_default &= ty.default;
        let attr_line =
            if attrs.is_empty() { String::new() } else { format!("#[context_local({})] ", attrs.join(", ")) };
        field_lines.push(format!("    {attr_line}pub {ident}: {},", ty.name));
        fields.push(GenField { accessor, ty });
    }
    if all_default && rng.chance(25) {
        struct_attrs.push("init".to_string());
    }
    let mut derive = "#[derive(ContextLocal)]".to_string();
    if struct_attrs.contains(&"init".to_string()) {
        derive = "#[derive(ContextLocal, Default)]".to_string();
    }
    if !valid_only && rng.chance(60) {
        valid = false;
        break_definition(rng, &mut struct_attrs, &mut field_lines);
    }
    let struct_line = struct_attrs.iter().map(|a| format!("#[context_local({a})]\n")).collect::<String>();
    let source = format!("{derive}\n{struct_line}pub struct {name} {{\n{}\n}}\n", field_lines.join("\n"));
    Definition { name, source, valid, thread_scope, fields }
}

/// Makes one mistake a user could make.
fn break_definition(rng: &mut Rng, struct_attrs: &mut Vec<String>, field_lines: &mut Vec<String>) {
    let first = field_lines.first().cloned().unwrap_or_default();
    match rng.below(12) {
        0 => struct_attrs.push("scope = \"process\"".into()),
        1 => struct_attrs.push("colour = 3".into()),
        2 => struct_attrs.push("no_inherit".into()),
        3 => field_lines[0] = first.replacen("pub ", "#[context_local(rename = \"1bad\")] pub ", 1),
        4 => field_lines[0] = first.replacen("pub ", "#[context_local(log = \"yaml\")] pub ", 1),
        5 => field_lines[0] = first.replacen("pub ", "#[context_local(default)] pub ", 1),
        6 => field_lines[0] = first.replacen("pub ", "#[context_local(scope = \"task\")] pub ", 1),
        7 => field_lines.clear(),
        8 => field_lines[0] = first.replacen("pub ", "#[context_local(no_inherit, no_inherit)] pub ", 1),
        9 => struct_attrs.push("scope = \"thread\"".into()),
        10 => {
            field_lines[0] = first.replacen("pub ", "#[context_local(rename = \"dup\")] pub ", 1)
                + &format!("\n    #[context_local(rename = \"dup\")] pub other{}: u8,", rng.below(100))
        }
        _ => struct_attrs.push("init = ".into()),
    }
}
