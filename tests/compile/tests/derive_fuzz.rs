//! The valid half of the derive's fuzz-style test: 60 generated definitions
//! (random field types, attributes, and names such as `r#type` or `café`)
//! are written into one program that trybuild compiles and runs; each field is
//! set, read, lent and deleted, in task scope inside a fresh context. The
//! broken half (rejected with a `syn::Error`, never a panic) is the derive's
//! own unit test, on the same generator.

#[path = "../../../context-local-derive/src/fuzz_gen.rs"]
mod fuzz_gen;

use std::fmt::Write as _;

use fuzz_gen::{definition, Rng};

fn program(count: usize) -> String {
    let mut rng = Rng::new(0x5EED);
    let mut out = String::from("#![allow(dead_code, non_snake_case, uncommon_codepoints)]\n\n");
    let mut calls = String::new();
    for n in 0..count {
        let def = definition(&mut rng, n, true);
        let mut body = String::new();
        for field in &def.fields {
            let access = format!("{}::{}()", def.name, field.accessor);
            let _ = writeln!(body, "        {access}.set({});", field.ty.value);
            let _ = writeln!(body, "        assert!({access}.is_set());");
            let _ = writeln!(body, "        assert!({access}.get().is_some());");
            let _ = writeln!(body, "        assert_eq!({access}.with(|_| 1), Some(1));");
            let _ = writeln!(body, "        assert!({access}.delete());");
        }
        let run = if def.thread_scope {
            format!("{{\n{body}    }}")
        } else {
            format!("context_local::Context::new().run(|| {{\n{body}    }})")
        };
        let _ = write!(
            out,
            "mod m{n} {{\n    use context_local::ContextLocal;\n\n{}\n    pub fn exercise() {{\n    {run};\n    }}\n}}\n\n",
            def.source.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n"),
        );
        let _ = writeln!(calls, "    m{n}::exercise();");
    }
    let _ = write!(out, "fn main() {{\n{calls}    println!(\"{count} generated structs work\");\n}}\n");
    out
}

#[test]
fn generated_valid_definitions_compile_and_work() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("derive-fuzz");
    std::fs::create_dir_all(&dir).expect("create the directory");
    let path = dir.join("generated.rs");
    std::fs::write(&path, program(60)).expect("write the program");
    trybuild::TestCases::new().pass(&path);
}
