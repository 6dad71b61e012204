//! `cargo xtask imports`: the module import graph of every crate in the workspace, and a check
//! that it has no cycles — no two source files (or longer chains of them) import each other.
//!
//! A module imports another when its code names a path into it: `use crate::a::X`,
//! `super::Y`, `self::b::Z`, `b::Z` for its own submodule `b`, grouped
//! (`use crate::{a::X, b}`) or inline in code; re-exports (`pub use`) count too, so a crate
//! root or `mod.rs` that re-exports its children must not also hold what they use. A parent
//! declaring a child (`mod b;`) is not an import; `#[cfg(test)] mod tests` blocks are left out
//! (a test may reach anywhere). Modules are found the way rustc finds them: from each crate root
//! (`src/lib.rs`, `src/main.rs`, `src/bin/*.rs`) through its `mod name;` declarations.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module: its path from the crate root (empty for the root).
type ModPath = Vec<String>;

/// One crate root's module tree and its imports.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    /// Every module and the file that holds it (inline modules share their file's).
    pub(crate) files: BTreeMap<ModPath, PathBuf>,
    /// module → modules it imports, each with the first path that did.
    pub(crate) imports: BTreeMap<ModPath, BTreeMap<ModPath, String>>,
}

/// Builds the graph of the crate whose root file is `root`.
pub(crate) fn graph(root: &Path) -> Result<Graph, String> {
    let mut g = Graph::default();
    let mut sources = Vec::new();
    let mut todo = vec![(Vec::new(), root.to_path_buf(), true)];
    while let Some((module, file, owns_dir)) = todo.pop() {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let code = without_tests(&strip_comments(&text));
        // Children: `a.rs` (or `a/mod.rs`, or the root) declares `mod b;` in `a/b.rs` or
        // `a/b/mod.rs`; `mod.rs` and the root own their directory.
        let dir = if owns_dir {
            file.parent().map(Path::to_path_buf).unwrap_or_default()
        } else {
            file.with_extension("")
        };
        for child in mod_declarations(&code) {
            let flat = dir.join(format!("{child}.rs"));
            let nested = dir.join(&child).join("mod.rs");
            let (path, owns) = if flat.is_file() {
                (flat, false)
            } else if nested.is_file() {
                (nested, true)
            } else {
                continue; // behind a cfg for another platform, or generated
            };
            let mut m = module.clone();
            m.push(child);
            todo.push((m, path, owns));
        }
        g.files.insert(module.clone(), file);
        g.imports.insert(module.clone(), BTreeMap::new());
        // Paths are resolved once every module is known.
        sources.push((module, code));
    }
    for (module, code) in sources {
        let children: Vec<String> = g
            .files
            .keys()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(&module))
            .filter_map(|m| m.last().cloned())
            .collect();
        for path in crate_paths(&code, &children) {
            let Some(target) = resolve(&module, &path, &g.files) else {
                continue;
            };
            if target != module {
                g.imports
                    .entry(module.clone())
                    .or_default()
                    .entry(target)
                    .or_insert_with(|| path.join("::"));
            }
        }
    }
    Ok(g)
}

impl Graph {
    /// The cycles: sets of two or more modules that reach each other through imports.
    pub(crate) fn cycles(&self) -> Vec<Vec<ModPath>> {
        // Tarjan's strongly connected components.
        struct State<'a> {
            g: &'a Graph,
            next: usize,
            index: BTreeMap<&'a ModPath, usize>,
            low: BTreeMap<&'a ModPath, usize>,
            stack: Vec<&'a ModPath>,
            on_stack: BTreeSet<&'a ModPath>,
            found: Vec<Vec<ModPath>>,
        }
        fn visit<'a>(s: &mut State<'a>, v: &'a ModPath) {
            s.index.insert(v, s.next);
            s.low.insert(v, s.next);
            s.next += 1;
            s.stack.push(v);
            s.on_stack.insert(v);
            let g = s.g;
            for w in g.imports.get(v).into_iter().flat_map(BTreeMap::keys) {
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let low = s.low[v].min(s.low[w]);
                    s.low.insert(v, low);
                } else if s.on_stack.contains(w) {
                    let low = s.low[v].min(s.index[w]);
                    s.low.insert(v, low);
                }
            }
            if s.low[v] == s.index[v] {
                let mut component = Vec::new();
                while let Some(w) = s.stack.pop() {
                    s.on_stack.remove(w);
                    component.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    s.found.push(component);
                }
            }
        }
        let mut s = State {
            g: self,
            next: 0,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            found: Vec::new(),
        };
        for v in self.imports.keys() {
            if !s.index.contains_key(v) {
                visit(&mut s, v);
            }
        }
        s.found.sort();
        s.found
    }

    /// One line per import inside `cycle`: which file names which module, through which path.
    pub(crate) fn explain(&self, cycle: &[ModPath]) -> Vec<String> {
        let members: BTreeSet<&ModPath> = cycle.iter().collect();
        let mut lines = Vec::new();
        for from in cycle {
            for (to, path) in self.imports.get(from).into_iter().flatten() {
                if members.contains(to) {
                    lines.push(format!(
                        "{} ({}) imports {} via `{path}`",
                        name(from),
                        self.files[from].display(),
                        name(to)
                    ));
                }
            }
        }
        lines
    }
}

/// `a::b`, or `<root>`.
pub(crate) fn name(m: &ModPath) -> String {
    if m.is_empty() {
        "<crate root>".into()
    } else {
        m.join("::")
    }
}

/// The module a path names: the longest prefix of its absolute form that is a module.
fn resolve(
    from: &ModPath,
    path: &[String],
    modules: &BTreeMap<ModPath, PathBuf>,
) -> Option<ModPath> {
    let mut abs: ModPath = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("self") => from.clone(),
        Some("super") => {
            let mut m = from.clone();
            m.pop()?;
            m
        }
        _ => return None,
    };
    for seg in &path[1..] {
        if seg == "super" {
            abs.pop()?;
        } else {
            abs.push(seg.clone());
        }
    }
    (0..=abs.len())
        .rev()
        .map(|n| abs[..n].to_vec())
        .find(|m| modules.contains_key(m))
}

/// Removes `//` comments (doc comments included) and `/* */` blocks; keeps string contents
/// (a path inside a string is not an import, but the scanner only looks after `crate`,
/// `super` and `self` followed by `::`, which strings rarely hold).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => {
                in_string = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut prev = ' ';
                for n in chars.by_ref() {
                    if prev == '*' && n == '/' {
                        break;
                    }
                    prev = n;
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Drops `#[cfg(test)] mod name { ... }` blocks.
fn without_tests(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        let after = rest[at + "#[cfg(test)]".len()..].trim_start();
        let is_mod = after.starts_with("mod ") || after.starts_with("pub(crate) mod ");
        let open = after.find('{');
        let semi = after.find(';');
        match (is_mod, open) {
            (true, Some(open)) if semi.is_none_or(|s| s > open) => {
                out.push_str(&rest[..at]);
                let body_start = rest.len() - after.len() + open;
                let end = matching_brace(rest, body_start).unwrap_or(rest.len());
                rest = &rest[end..];
            }
            _ => {
                out.push_str(&rest[..at + 1]);
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The index just past the `}` that closes the `{` at `open`.
fn matching_brace(text: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// The names of `mod name;` declarations (not inline `mod name { }` blocks).
fn mod_declarations(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in code.lines() {
        let mut l = line.trim();
        if let Some(rest) = l.strip_prefix("pub") {
            // `pub mod`, `pub(crate) mod`, `pub(super) mod`
            l = match rest.trim_start().strip_prefix('(') {
                Some(r) => r.split_once(')').map_or("", |(_, r)| r).trim_start(),
                None => rest.trim_start(),
            };
        }
        if let Some(rest) = l.strip_prefix("mod ")
            && let Some(name) = rest.trim().strip_suffix(';')
            && name.chars().all(is_ident)
        {
            names.push(name.trim_start_matches("r#").to_string());
        }
    }
    names
}

/// Every path starting with `crate`, `super` or `self` followed by `::`, or with the name of
/// one of `children` (the module's own submodules, which a path may name directly), with
/// grouped imports (`crate::{a::X, b::{c, d}}`) expanded. Child-relative paths come back
/// with `self` in front.
fn crate_paths(code: &str, children: &[String]) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut paths = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !is_ident(bytes[i - 1] as char) && bytes[i - 1] != b':';
        if starts_word && code.is_char_boundary(i) {
            let keywords = ["crate", "super", "self"].into_iter();
            for kw in keywords.chain(children.iter().map(String::as_str)) {
                let whole_word = code[i..]
                    .strip_prefix(kw)
                    .is_some_and(|after| after.starts_with("::"));
                if whole_word {
                    let mut parser = TreeParser {
                        s: &code[i..],
                        pos: 0,
                    };
                    let is_child = !matches!(kw, "crate" | "super" | "self");
                    for mut p in parser.tree() {
                        if is_child {
                            p.insert(0, "self".into());
                        }
                        paths.push(p);
                    }
                    i += parser.pos.max(1);
                    break;
                }
            }
        }
        i += 1;
    }
    paths
}

/// Identifier characters (ASCII: the paths this looks for are ASCII).
fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// A little parser of use trees: `a::b::{c, d::e, f::{g}}`.
struct TreeParser<'a> {
    s: &'a str,
    pos: usize,
}

impl TreeParser<'_> {
    fn skip_ws(&mut self) {
        while self.s[self.pos..].starts_with(char::is_whitespace) {
            self.pos += self.s[self.pos..].chars().next().map_or(1, char::len_utf8);
        }
    }

    fn ident(&mut self) -> Option<String> {
        self.skip_ws();
        let start = self.pos;
        while self.s[self.pos..].starts_with(is_ident) {
            self.pos += 1;
        }
        (self.pos > start).then(|| self.s[start..self.pos].to_string())
    }

    /// The paths of the tree starting here.
    fn tree(&mut self) -> Vec<Vec<String>> {
        let mut prefix = Vec::new();
        loop {
            self.skip_ws();
            if self.s[self.pos..].starts_with('{') {
                self.pos += 1;
                let mut out = Vec::new();
                loop {
                    self.skip_ws();
                    if self.s[self.pos..].starts_with('}') {
                        self.pos += 1;
                        break;
                    }
                    if self.pos >= self.s.len() {
                        break;
                    }
                    let before = self.pos;
                    for sub in self.tree() {
                        let mut p = prefix.clone();
                        p.extend(sub);
                        out.push(p);
                    }
                    self.skip_ws();
                    if self.s[self.pos..].starts_with(',') {
                        self.pos += 1;
                    } else if self.pos == before {
                        self.pos += 1; // not a use tree (e.g. a struct literal): move on
                    }
                }
                return out;
            }
            match self.ident() {
                Some(id) => prefix.push(id),
                None => return vec![prefix],
            }
            if self.s[self.pos..].starts_with("::") {
                self.pos += 2;
            } else {
                return vec![prefix];
            }
        }
    }
}

/// The crate roots of the workspace at `root`: every `src/lib.rs`, `src/main.rs` and
/// `src/bin/*.rs` of a member listed in the workspace's `Cargo.toml`.
pub(crate) fn crate_roots(root: &Path) -> Result<Vec<PathBuf>, String> {
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))
        .map_err(|e| format!("cannot read the workspace Cargo.toml: {e}"))?;
    let members = manifest
        .split_once("members")
        .and_then(|(_, rest)| rest.split_once('['))
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(list, _)| list)
        .ok_or("no `members = [...]` in the workspace Cargo.toml")?;
    let mut roots = Vec::new();
    for member in members.split(',') {
        let member = member.trim().trim_matches('"');
        if member.is_empty() {
            continue;
        }
        let src = root.join(member).join("src");
        for file in ["lib.rs", "main.rs"] {
            if src.join(file).is_file() {
                roots.push(src.join(file));
            }
        }
        if let Ok(bins) = std::fs::read_dir(src.join("bin")) {
            for bin in bins.flatten() {
                if bin.path().extension().is_some_and(|e| e == "rs") {
                    roots.push(bin.path());
                }
            }
        }
    }
    roots.sort();
    Ok(roots)
}

/// `cargo xtask imports`: checks every crate; fails when any has a cycle.
pub(crate) fn run(root: &Path) -> Result<(), String> {
    let mut modules = 0;
    let mut imports = 0;
    let mut problems = Vec::new();
    let roots = crate_roots(root)?;
    for crate_root in &roots {
        let g = graph(crate_root)?;
        modules += g.files.len();
        imports += g.imports.values().map(BTreeMap::len).sum::<usize>();
        for cycle in g.cycles() {
            let names: Vec<String> = cycle.iter().map(name).collect();
            let mut text = format!(
                "{}: import cycle between {}:",
                crate_root
                    .strip_prefix(root)
                    .unwrap_or(crate_root)
                    .display(),
                names.join(", ")
            );
            for line in g.explain(&cycle) {
                text.push_str("\n    ");
                text.push_str(&line);
            }
            problems.push(text);
        }
    }
    println!(
        "imports: {} crate roots, {modules} modules, {imports} module-to-module imports",
        roots.len()
    );
    if problems.is_empty() {
        println!("imports: no cycles");
        Ok(())
    } else {
        for p in &problems {
            println!("{p}");
        }
        Err(format!(
            "{} import cycles; move what both sides need into a module of its own",
            problems.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> (tempfile_lite::Dir, Graph) {
        let dir = tempfile_lite::Dir::new();
        for (path, text) in files {
            let p = dir.0.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        let g = graph(&dir.0.join("lib.rs")).unwrap();
        (dir, g)
    }

    /// A scratch directory removed on drop (xtask has no tempfile dependency).
    mod tempfile_lite {
        pub(crate) struct Dir(pub(crate) std::path::PathBuf);
        impl Dir {
            pub(crate) fn new() -> Dir {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static N: AtomicUsize = AtomicUsize::new(0);
                let p = std::env::temp_dir().join(format!(
                    "xtask-imports-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn m(s: &str) -> ModPath {
        s.split("::")
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect()
    }

    #[test]
    fn two_files_that_import_each_other_are_a_cycle() {
        let (_d, g) = tree(&[
            ("lib.rs", "mod a;\nmod b;\npub use a::A;\n"),
            ("a.rs", "use crate::b::B;\npub struct A;\n"),
            ("b.rs", "pub struct B(crate::a::A);\n"),
        ]);
        assert_eq!(g.cycles(), vec![vec![m("a"), m("b")]]);
        let why = g.explain(&g.cycles()[0]);
        assert!(why[0].contains("imports b via `crate::b::B`"), "{why:?}");
    }

    #[test]
    fn grouped_and_nested_imports_and_super_paths_count() {
        let (_d, g) = tree(&[
            ("lib.rs", "mod run;\n"),
            (
                "run/mod.rs",
                "mod waiters;\nuse self::{waiters::{Waiters}};\npub struct Waiter;\n",
            ),
            (
                "run/waiters.rs",
                "use super::{Waiter};\npub struct Waiters;\n",
            ),
        ]);
        assert_eq!(g.cycles(), vec![vec![m("run"), m("run::waiters")]]);
    }

    #[test]
    fn a_chain_of_three_is_one_cycle_and_a_dag_has_none() {
        let (_d, g) = tree(&[
            ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
            ("a.rs", "use crate::b::X;"),
            ("b.rs", "use crate::c::X;"),
            ("c.rs", "use crate::a::X;"),
        ]);
        assert_eq!(g.cycles(), vec![vec![m("a"), m("b"), m("c")]]);
        let (_d, g) = tree(&[
            ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
            ("a.rs", "use crate::b::X; use crate::c::Y;"),
            ("b.rs", "use crate::c::X;"),
            ("c.rs", ""),
        ]);
        assert!(g.cycles().is_empty());
        assert_eq!(g.imports[&m("a")].len(), 2);
    }

    #[test]
    fn comments_tests_and_declarations_are_not_imports() {
        let (_d, g) = tree(&[
            (
                "lib.rs",
                "mod a;\nmod b;\n/// see [`a`](crate::a)\nfn f() {}\n",
            ),
            (
                "a.rs",
                "// uses crate::b::B in a comment\n/* crate::b::C */\npub struct A;\n\
                 #[cfg(test)]\nmod tests {\n    use crate::b::B;\n}\n",
            ),
            ("b.rs", "use crate::a::A;\npub struct B;\n"),
        ]);
        assert!(g.cycles().is_empty(), "{:?}", g.imports);
        assert!(g.imports[&m("a")].is_empty());
        assert!(g.imports[&m("")].is_empty());
    }

    #[test]
    fn a_root_that_reexports_its_children_must_not_hold_what_they_use() {
        let (_d, g) = tree(&[
            ("lib.rs", "mod a;\npub use a::A;\npub struct Error;\n"),
            ("a.rs", "pub struct A(crate::Error);\n"),
        ]);
        assert_eq!(g.cycles(), vec![vec![m(""), m("a")]]);
        let (_d, g) = tree(&[
            (
                "lib.rs",
                "mod a;\nmod error;\npub use a::A;\npub use error::Error;\n",
            ),
            ("a.rs", "pub struct A(crate::error::Error);\n"),
            ("error.rs", "pub struct Error;\n"),
        ]);
        assert!(g.cycles().is_empty(), "{:?}", g.imports);
    }

    #[test]
    fn the_workspace_has_no_import_cycles() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let roots = crate_roots(&root).unwrap();
        assert!(roots.len() >= 10, "{roots:?}");
        let mut cycles = Vec::new();
        for r in &roots {
            let g = graph(r).unwrap();
            assert!(!g.files.is_empty());
            for c in g.cycles() {
                cycles.push(format!("{}: {}", r.display(), g.explain(&c).join("; ")));
            }
        }
        assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
    }
}
