//! The shape of `src/`, measured from the code itself on every test run:
//! no production file over 600 lines before its unit tests, no function
//! over 120 lines, and no import cycle between top-level modules.
//!
//! It reads the files as text (rustfmt's layout makes that reliable: a
//! function's closing brace stands alone at the indentation of its `fn`).
//! Test-only code does not count: a file's `#[cfg(test)]` tail, and files
//! that only tests compile (`#[cfg(test)] mod x;`, or included by
//! `#[path]` from such a file). `cargo test --test structure -- --nocapture`
//! prints the numbers.
//!
//! And the shape of `tests/`: one integration-test crate, `tests/it/`
//! (see its main.rs), beside this file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 600;
const MAX_FN_LINES: usize = 120;

struct Source {
    /// Path relative to the crate root, e.g. `src/fanout/hub.rs`.
    path: String,
    /// The lines before the first top-level `#[cfg(test)] mod … {`.
    production: Vec<String>,
}

fn src_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            src_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Files only tests compile: declared behind `#[cfg(test)]`, or pulled in
/// with `#[path = "…"]` by such a file.
fn test_only_files(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut test_only = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let dir = file.parent().unwrap();
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim();
            let Some(name) = line
                .strip_prefix("mod ")
                .or_else(|| line.strip_prefix("pub mod "))
                .and_then(|rest| rest.strip_suffix(';'))
            else {
                continue;
            };
            let before = if i > 0 { lines[i - 1].trim() } else { "" };
            if !before.starts_with("#[cfg(test)]") {
                continue;
            }
            let stem = file.file_stem().unwrap();
            let base = if stem == "mod" || stem == "lib" || stem == "main" {
                dir.to_path_buf()
            } else {
                dir.join(stem)
            };
            let child = base.join(format!("{name}.rs"));
            test_only.insert(child.clone());
            // What the test-only file includes by #[path] is test-only too.
            if let Ok(child_text) = std::fs::read_to_string(&child) {
                for l in child_text.lines() {
                    if let Some(p) = l
                        .trim()
                        .strip_prefix("#[path = \"")
                        .and_then(|r| r.strip_suffix("\"]"))
                    {
                        test_only.insert(normalize(&child.parent().unwrap().join(p)));
                    }
                }
            }
        }
    }
    test_only
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    src_files(&root.join("src"), &mut files);
    let test_only = test_only_files(&files);
    files
        .iter()
        .filter(|f| !test_only.contains(&normalize(f)))
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            // The tail is the first top-level `#[cfg(test)] mod … {`; a
            // test-only `use`, item or `mod x;` before it does not end the
            // file.
            let tail = (0..lines.len())
                .find(|&i| {
                    lines[i].starts_with("#[cfg(test)]")
                        && lines
                            .get(i + 1)
                            .is_some_and(|next| next.starts_with("mod ") && next.ends_with('{'))
                })
                .unwrap_or(lines.len());
            let production = lines[..tail].iter().map(|l| (*l).to_owned()).collect();
            Source {
                path: f.strip_prefix(root).unwrap().display().to_string(),
                production,
            }
        })
        .collect()
}

/// `(name, first line, length)` of every function with a body.
fn functions(lines: &[String]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let mut rest = trimmed;
        for prefix in ["pub(crate) ", "pub(super) ", "pub "] {
            if let Some(r) = rest.strip_prefix(prefix) {
                rest = r;
                break;
            }
        }
        for prefix in ["const ", "async ", "unsafe ", "extern \"C\" "] {
            if let Some(r) = rest.strip_prefix(prefix) {
                rest = r;
            }
        }
        let Some(sig) = rest.strip_prefix("fn ") else {
            continue;
        };
        let name: String = sig
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let closing = format!("{}}}", " ".repeat(indent));
        // A declaration without a body ends with `;` before any `{`.
        let mut end = None;
        for (j, l) in lines.iter().enumerate().skip(i) {
            if l.trim_end().ends_with(';') && !lines[i..=j].iter().any(|x| x.contains('{')) {
                break;
            }
            if *l == closing || (j == i && l.trim_end().ends_with('}')) {
                end = Some(j);
                break;
            }
        }
        if let Some(end) = end {
            out.push((name, i + 1, end - i + 1));
        }
    }
    out
}

/// Top-level module of a path under `src/`: `src/fanout/hub.rs` → `fanout`.
fn top_module(path: &str) -> Option<String> {
    let rest = path.strip_prefix("src/")?;
    let first = rest.split('/').next()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_owned())
}

/// Edges `a → b` where code of top-level module `a` names `crate::b`.
fn module_graph(sources: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = sources.iter().filter_map(|s| top_module(&s.path)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for source in sources {
        let Some(from) = top_module(&source.path) else {
            continue;
        };
        let edges = graph.entry(from.clone()).or_default();
        for line in &source.production {
            let code = line.split("//").next().unwrap_or("");
            for (at, _) in code.match_indices("crate::") {
                let name: String = code[at + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if name != from && modules.contains(&name) {
                    edges.insert(name);
                }
            }
            // `use crate::{a, b::C}` groups.
            if let Some(group) = code.trim().strip_prefix("use crate::{") {
                for part in group.split(',') {
                    let name: String = part
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if name != from && modules.contains(&name) {
                        edges.insert(name);
                    }
                }
            }
        }
    }
    graph
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on_stack.insert(v);
            if let Some(edges) = self.graph.get(v) {
                for w in edges {
                    let w = w.as_str();
                    if !self.index.contains_key(w) {
                        self.visit(w);
                        let low = self.low[v].min(self.low[w]);
                        self.low.insert(v, low);
                    } else if self.on_stack.contains(w) {
                        let low = self.low[v].min(self.index[w]);
                        self.low.insert(v, low);
                    }
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.out.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

#[test]
fn no_production_file_is_over_600_lines_before_its_tests() {
    let mut sizes: Vec<(usize, String)> = sources()
        .iter()
        .map(|s| (s.production.len(), s.path.clone()))
        .collect();
    sizes.sort_by(|a, b| b.cmp(a));
    println!("largest files (lines before #[cfg(test)]):");
    for (lines, path) in sizes.iter().take(10) {
        println!("  {lines:>5}  {path}");
    }
    let over: Vec<_> = sizes.iter().filter(|(n, _)| *n > MAX_FILE_LINES).collect();
    assert!(
        over.is_empty(),
        "files over {MAX_FILE_LINES} lines: {over:?}"
    );
}

#[test]
fn no_function_is_over_120_lines() {
    let mut all = Vec::new();
    for source in sources() {
        for (name, line, len) in functions(&source.production) {
            all.push((len, format!("{}:{line} {name}", source.path)));
        }
    }
    assert!(
        all.len() > 100,
        "the function scan found too little: {}",
        all.len()
    );
    all.sort_by(|a, b| b.cmp(a));
    println!("longest functions:");
    for (len, at) in all.iter().take(10) {
        println!("  {len:>5}  {at}");
    }
    let over: Vec<_> = all.iter().filter(|(n, _)| *n > MAX_FN_LINES).collect();
    assert!(
        over.is_empty(),
        "functions over {MAX_FN_LINES} lines: {over:?}"
    );
}

#[test]
fn top_level_modules_have_no_import_cycle() {
    let graph = module_graph(&sources());
    assert!(
        graph.len() > 5,
        "the module scan found too little: {graph:?}"
    );
    println!("top-level module imports:");
    for (from, to) in &graph {
        println!(
            "  {from} -> {}",
            to.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let found = cycles(&graph);
    assert!(
        found.is_empty(),
        "import cycles between top-level modules: {found:?}"
    );
}

#[test]
fn the_scanners_see_what_they_measure() {
    // A cycle and a long function, made up, must be found.
    let mut graph = BTreeMap::new();
    graph.insert("a".to_owned(), BTreeSet::from(["b".to_owned()]));
    graph.insert("b".to_owned(), BTreeSet::from(["a".to_owned()]));
    graph.insert("c".to_owned(), BTreeSet::from(["a".to_owned()]));
    assert_eq!(cycles(&graph), vec![vec!["a".to_owned(), "b".to_owned()]]);
    let mut body = vec!["    pub async fn long(x: u8) -> u8 {".to_owned()];
    body.extend((0..130).map(|_| "        x;".to_owned()));
    body.push("    }".to_owned());
    body.push("fn decl();".to_owned());
    body.push("fn short() {}".to_owned());
    let found = functions(&body);
    assert_eq!(found[0], ("long".to_owned(), 1, 132));
    assert_eq!(found[1], ("short".to_owned(), 134, 1));
    assert_eq!(found.len(), 2);
}

/// The modules a module file declares: `mod x;` and `pub mod x;` lines
/// (with or without a `#[cfg(...)]` above).
fn declared_modules(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter_map(|line| {
            line.strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("mod "))
                .and_then(|rest| rest.strip_suffix(';'))
        })
        .map(str::to_owned)
        .collect()
}

/// The `.rs` files directly in `dir`, by stem.
fn rust_stems(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// One integration-test crate: a test file directly in `tests/` would be a
/// binary of its own that links walcast again; a file in `tests/it/` that
/// main.rs does not declare would never run; helpers come from `support`,
/// not `#[path]` includes, and without a blanket `allow(dead_code)`.
#[test]
fn integration_tests_are_one_crate() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    assert_eq!(
        rust_stems(&tests),
        BTreeSet::from(["structure".to_owned()]),
        "a test file directly in tests/: make it a module of tests/it/ (see tests/it/main.rs)"
    );
    let it = tests.join("it");
    for (dir, root) in [(it.clone(), "main"), (it.join("support"), "mod")] {
        let text = std::fs::read_to_string(dir.join(format!("{root}.rs"))).unwrap();
        let declared = declared_modules(&text);
        let mut files = rust_stems(&dir);
        files.remove(root);
        let undeclared: Vec<_> = files.difference(&declared).collect();
        assert!(
            undeclared.is_empty(),
            "{undeclared:?} in {} are not declared in {root}.rs, so they never run",
            dir.display()
        );
    }
    let mut files = Vec::new();
    src_files(&it, &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines().map(str::trim) {
            assert!(
                !line.starts_with("#[path"),
                "{}: `{line}`: use `crate::support::...` instead",
                file.display()
            );
            assert!(
                !line.starts_with("#![allow(dead_code)]"),
                "{}: a blanket allow(dead_code): delete unused helpers instead",
                file.display()
            );
        }
    }
}

#[test]
fn the_module_scanner_sees_cfg_and_pub() {
    let text = "mod support;\n\n#[cfg(feature = \"x\")]\nmod b;\npub mod c;\nmod d {\n// mod e;\n";
    assert_eq!(
        declared_modules(text),
        BTreeSet::from(["b".to_owned(), "c".to_owned(), "support".to_owned()])
    );
}
