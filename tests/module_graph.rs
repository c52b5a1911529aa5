//! No source file imports another that imports it back, directly or through
//! others: the file-level import graph of both crates (`ublk-stack`'s library
//! and `layers`) has no cycles.
//!
//! How the graph is built, from the source text alone:
//! - The nodes are the files the crate compiles: its `lib.rs` and, following
//!   each `mod name;` declaration, `name.rs` or `name/mod.rs`. A file's module
//!   path follows from where it sits (`src/daemon/reload.rs` is
//!   `crate::daemon::reload`).
//! - A file imports another when it names a path into it: a `use` tree
//!   (`use super::{control, status}` names both), or a path in code that starts
//!   with `crate::`, `super::` or `self::`, or with a child module's name
//!   (`child::f()` in the parent). The path resolves to the longest prefix that
//!   is a module file: `crate::config::load` is an import of `config/mod.rs`,
//!   `super::reload::Record` one of `reload.rs`. `super` counts from the
//!   inline module the path sits in, so `use super::*` in a `mod tests { }`
//!   block names its own file and is no edge.
//! - `mod child;` in a parent is not an import by itself: it only places the
//!   child in the tree, and the child naming its parent's items (its tests'
//!   `use super::…`) is the ordinary direction. Nor is a re-export
//!   (`pub use child::Thing`, `pub(crate) use …`): it only makes a name visible
//!   in another place, so a path through it (`crate::Thing`) is followed to the
//!   file that defines the item, and that file is what gets imported. A parent
//!   whose own code names a child's items (`child::f()`, a private `use`)
//!   imports it like any other file does.
//! - A module split over files (a parent and its own submodules, down one line
//!   of the module tree) may use itself both ways: the parts use the parent's
//!   shared types, the parent calls its parts. A cycle is reported when it
//!   takes at least one import between two files neither of which contains
//!   the other: two siblings (`daemon/lifecycle.rs` and `daemon/status.rs`),
//!   or files of different modules, directly or through any others, parents
//!   included.
//! - `src/main.rs` is a crate of its own that reaches the library only by its
//!   name; edges between crates cannot close a cycle (Cargo forbids it).
//!
//! Comments and string literals are skipped, so a path in prose or in a
//! message is no import.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

#[test]
fn ublk_stack_has_no_import_cycles() {
    assert_acyclic(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"));
}

#[test]
fn layers_has_no_import_cycles() {
    assert_acyclic(&Path::new(env!("CARGO_MANIFEST_DIR")).join("layers/src/lib.rs"));
}

/// The daemon drives the front ends through one trait (`daemon/front_end.rs`);
/// they know nothing of it: no file of `nbd/` or `ublk/` imports `daemon/`.
#[test]
fn front_ends_import_nothing_from_the_daemon() {
    let graph = Graph::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"));
    let mut wrong = Vec::new();
    for (from, targets) in &graph.edges {
        if !matches!(from.first().map(String::as_str), Some("nbd" | "ublk")) {
            continue;
        }
        for to in targets
            .iter()
            .filter(|t| t.first().map(String::as_str) == Some("daemon"))
        {
            wrong.push(format!("{} -> {}", graph.name(from), graph.name(to)));
        }
    }
    assert!(
        wrong.is_empty(),
        "front ends importing the daemon:\n  {}",
        wrong.join("\n  ")
    );
}

/// The test's own check: a two-file cycle written out is found.
#[test]
fn a_cycle_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    fs::write(src.join("lib.rs"), "mod a;\nmod b;\nmod c;\n").unwrap();
    fs::write(src.join("a.rs"), "use crate::b::f;\n// use crate::c;\n").unwrap();
    fs::write(src.join("b.rs"), "pub fn f() { super::a::g(\"crate::c\") }").unwrap();
    fs::write(src.join("c.rs"), "mod t { use super::*; }").unwrap();
    let graph = Graph::load(&src.join("lib.rs"));
    let cycles = graph.cycles();
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert_eq!(cycles[0], ["a.rs", "b.rs", "a.rs"]);
}

/// A parent and its parts may use each other; two parts may not, not even
/// through the parent, and a re-export is followed to where the item lives.
#[test]
fn a_cycle_through_a_parent_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    fs::create_dir(src.join("m")).unwrap();
    fs::write(src.join("lib.rs"), "mod m;\nmod n;\n").unwrap();
    let parent = "mod x;\nmod y;\npub use x::X;\npub fn run() { y::go() }\n";
    fs::write(src.join("m/mod.rs"), parent).unwrap();
    fs::write(src.join("m/x.rs"), "use super::run;\npub struct X;").unwrap();
    fs::write(src.join("m/y.rs"), "pub fn go() {}").unwrap();
    fs::write(src.join("n.rs"), "use crate::m::X;").unwrap();
    let graph = Graph::load(&src.join("lib.rs"));
    assert!(graph.edges[&vec!["n".to_string()]].contains(&vec!["m".to_string(), "x".to_string()]));
    assert_eq!(graph.cycles(), Vec::<Vec<String>>::new());

    fs::write(src.join("m/y.rs"), "pub fn go() { crate::m::X; }").unwrap();
    let cycles = Graph::load(&src.join("lib.rs")).cycles();
    assert_eq!(cycles, [["m/y.rs", "m/x.rs", "m/mod.rs", "m/y.rs"]]);
}

fn assert_acyclic(lib: &Path) {
    let graph = Graph::load(lib);
    assert!(
        graph.files.len() > 5,
        "only {} files found",
        graph.files.len()
    );
    let cycles = graph.cycles();
    let shown: Vec<String> = cycles.iter().map(|c| c.join(" -> ")).collect();
    assert!(
        cycles.is_empty(),
        "import cycles in {}:\n  {}",
        lib.display(),
        shown.join("\n  ")
    );
}

/// Module path (`["daemon", "reload"]`) of each file, and the files it imports.
struct Graph {
    root: PathBuf,
    files: BTreeMap<Vec<String>, PathBuf>,
    edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
    /// Names each file re-exports, and where they come from (`None`: from
    /// another crate).
    reexports: BTreeMap<Vec<String>, BTreeMap<String, Option<Vec<String>>>>,
}

impl Graph {
    fn load(lib: &Path) -> Graph {
        let root = lib.parent().unwrap().to_path_buf();
        let mut graph = Graph {
            root,
            files: BTreeMap::new(),
            edges: BTreeMap::new(),
            reexports: BTreeMap::new(),
        };
        let mut tokens = BTreeMap::new();
        let mut todo = vec![(Vec::new(), lib.to_path_buf())];
        while let Some((module, file)) = todo.pop() {
            let text =
                fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let toks = lex(&text);
            for child in declared_modules(&toks) {
                let dir = if module.is_empty() || file.ends_with("mod.rs") {
                    file.parent().unwrap().to_path_buf()
                } else {
                    file.with_extension("")
                };
                let flat = dir.join(format!("{child}.rs"));
                let nested = dir.join(&child).join("mod.rs");
                let path = if flat.exists() { flat } else { nested };
                assert!(path.exists(), "mod {child} of {}: no file", file.display());
                let mut m = module.clone();
                m.push(child);
                todo.push((m, path));
            }
            graph.files.insert(module.clone(), file);
            tokens.insert(module, toks);
        }
        let mut imports = BTreeMap::new();
        for (module, toks) in &tokens {
            let (paths, reexports) = imported_paths(module, toks, &graph.files);
            imports.insert(module.clone(), paths);
            graph.reexports.insert(module.clone(), reexports);
        }
        for (module, paths) in imports {
            let targets: BTreeSet<Vec<String>> = paths
                .into_iter()
                .filter_map(|p| graph.resolve(&p))
                .filter(|t| *t != module)
                .collect();
            graph.edges.insert(module, targets);
        }
        graph
    }

    /// The module file a path lands in: its longest prefix that is one, or,
    /// when that file only re-exports the name, the file it comes from.
    fn resolve(&self, path: &[String]) -> Option<Vec<String>> {
        let mut path = path.to_vec();
        // Bounded: re-exports that chain back on themselves do not compile.
        for _ in 0..16 {
            let file = (0..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| self.files.contains_key(p))?;
            let Some(name) = path.get(file.len()) else {
                return Some(file);
            };
            match self.reexports[&file].get(name) {
                None => return Some(file),
                Some(None) => return None,
                Some(Some(source)) => {
                    path = source
                        .iter()
                        .chain(&path[file.len() + 1..])
                        .cloned()
                        .collect();
                }
            }
        }
        None
    }

    fn name(&self, module: &[String]) -> String {
        let file = &self.files[module];
        file.strip_prefix(&self.root)
            .unwrap_or(file)
            .display()
            .to_string()
    }

    /// One cycle (as file names, first repeated last) through each import
    /// between two files that are not on one line of the module tree, while
    /// it is not yet part of one found.
    fn cycles(&self) -> Vec<Vec<String>> {
        let mut found = Vec::new();
        let mut done: BTreeSet<(&Vec<String>, &Vec<String>)> = BTreeSet::new();
        for (from, targets) in &self.edges {
            for to in targets {
                if nested(from, to) || done.contains(&(from, to)) {
                    continue;
                }
                if let Some(back) = self.path(to, from) {
                    let mut cycle = vec![from];
                    cycle.extend(back);
                    done.extend(cycle.windows(2).map(|w| (w[0], w[1])));
                    found.push(cycle.iter().map(|m| self.name(m)).collect());
                }
            }
        }
        found
    }

    /// A shortest chain of imports from `from` to `to`, both included.
    fn path<'a>(&'a self, from: &'a Vec<String>, to: &Vec<String>) -> Option<Vec<&'a Vec<String>>> {
        let mut came_from: BTreeMap<&Vec<String>, &Vec<String>> = BTreeMap::new();
        let mut frontier = vec![from];
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for node in frontier {
                if node == to {
                    let mut chain = vec![node];
                    while let Some(prev) = came_from.get(chain.last().unwrap()) {
                        chain.push(prev);
                    }
                    chain.reverse();
                    return Some(chain);
                }
                for target in &self.edges[node] {
                    if target != from && !came_from.contains_key(target) {
                        came_from.insert(target, node);
                        next.push(target);
                    }
                }
            }
            frontier = next;
        }
        None
    }
}

/// Whether one module is the other's ancestor (the crate root is everyone's).
fn nested(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
}

/// Identifiers, `::` and single punctuation; comments, strings, characters,
/// lifetimes and numbers dropped.
fn lex(text: &str) -> Vec<Tok> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    while i < c.len() {
        let ch = c[i];
        if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = skip_string(&c, i + 1);
        } else if (ch == 'r' || ch == 'b') && is_raw_string(&c, i) {
            i += if ch == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while at(i) == '#' {
                hashes += 1;
                i += 1;
            }
            i += 1;
            loop {
                if i >= c.len() {
                    break;
                }
                if c[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
        } else if ch == 'b' && at(i + 1) == '"' {
            i = skip_string(&c, i + 2);
        } else if ch == '\'' || (ch == 'b' && at(i + 1) == '\'') {
            let q = if ch == 'b' { i + 1 } else { i };
            if at(q + 1) == '\\' {
                // An escaped character: up to the closing quote.
                i = q + 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if at(q + 2) == '\'' {
                i = q + 3;
            } else {
                // A lifetime: its name lexes as an identifier nobody asks for.
                i = q + 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(c[start..i].iter().collect()));
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
        } else if ch == ':' && at(i + 1) == ':' {
            out.push(Tok::Path);
            i += 2;
        } else {
            if !ch.is_whitespace() {
                out.push(Tok::Punct(ch));
            }
            i += 1;
        }
    }
    out
}

fn skip_string(c: &[char], mut i: usize) -> usize {
    while i < c.len() {
        match c[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

fn is_raw_string(c: &[char], i: usize) -> bool {
    let mut j = i + if c[i] == 'b' { 1 } else { 0 };
    if c.get(j) != Some(&'r') {
        return false;
    }
    if i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_') {
        return false;
    }
    j += 1;
    while c.get(j) == Some(&'#') {
        j += 1;
    }
    c.get(j) == Some(&'"')
}

fn ident(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

/// `mod name;` declarations (not inline `mod name { }` blocks).
fn declared_modules(toks: &[Tok]) -> Vec<String> {
    let mut out = Vec::new();
    for w in toks.windows(3) {
        if let (Tok::Ident(m), Tok::Ident(name), Tok::Punct(';')) = (&w[0], &w[1], &w[2]) {
            if m == "mod" {
                out.push(name.clone());
            }
        }
    }
    out
}

/// Every module path the file names, made absolute (from the crate root), and
/// the names it re-exports with where they come from.
type Reexports = BTreeMap<String, Option<Vec<String>>>;
fn imported_paths(
    module: &[String],
    toks: &[Tok],
    files: &BTreeMap<Vec<String>, PathBuf>,
) -> (Vec<Vec<String>>, Reexports) {
    let mut out = Vec::new();
    let mut reexports = BTreeMap::new();
    // The inline modules the current token sits in, and the brace depth at
    // which each one closes.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < toks.len() {
        let here: Vec<String> = module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(m, _)| m.clone()))
            .collect();
        match &toks[i] {
            Tok::Punct('{') => {
                depth += 1;
                i += 1;
            }
            Tok::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth -= 1;
                i += 1;
            }
            Tok::Ident(m) if m == "mod" && toks.get(i + 2) == Some(&Tok::Punct('{')) => {
                let name = ident(toks.get(i + 1)).unwrap_or_default().to_string();
                inline.push((name, depth + 1));
                i += 2;
            }
            Tok::Ident(u) if u == "use" => {
                let public = is_pub(toks, i);
                let mut paths = Vec::new();
                i = use_tree(toks, i + 1, Vec::new(), &mut paths);
                for (p, name) in paths {
                    let target = absolute(&here, &p, files);
                    if !public {
                        out.extend(target);
                    } else if inline.is_empty() {
                        reexports.insert(name, target);
                    }
                }
            }
            Tok::Ident(_)
                if toks.get(i + 1) == Some(&Tok::Path) && (i == 0 || toks[i - 1] != Tok::Path) =>
            {
                let mut path = Vec::new();
                while let Some(seg) = ident(toks.get(i)) {
                    path.push(seg.to_string());
                    if toks.get(i + 1) != Some(&Tok::Path) {
                        i += 1;
                        break;
                    }
                    i += 2;
                }
                out.extend(absolute(&here, &path, files));
            }
            _ => i += 1,
        }
    }
    (out, reexports)
}

/// Whether the `use` at `i` is `pub use` or `pub(…) use`.
fn is_pub(toks: &[Tok], i: usize) -> bool {
    let before = |k: usize| i.checked_sub(k).and_then(|j| toks.get(j));
    if ident(before(1)) == Some("pub") {
        return true;
    }
    if before(1) != Some(&Tok::Punct(')')) {
        return false;
    }
    (2..8).any(|k| before(k) == Some(&Tok::Punct('(')) && ident(before(k + 1)) == Some("pub"))
}

/// Expand the use tree starting at `i` under `prefix` into paths and the names
/// they bind (`*` for a glob); returns the index past its end.
fn use_tree(
    toks: &[Tok],
    mut i: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, String)>,
) -> usize {
    if toks.get(i) == Some(&Tok::Path) {
        // `use ::name`: an external crate.
        prefix.push("::".to_string());
        i += 1;
    }
    loop {
        match toks.get(i) {
            Some(Tok::Ident(s)) if s == "self" && !prefix.is_empty() => {
                out.push((prefix.clone(), prefix.last().unwrap().clone()));
                i += 1;
            }
            Some(Tok::Ident(s)) => {
                prefix.push(s.clone());
                i += 1;
                if toks.get(i) == Some(&Tok::Path) {
                    i += 1;
                    continue;
                }
                out.push((prefix.clone(), s.clone()));
            }
            Some(Tok::Punct('*')) => {
                out.push((prefix.clone(), "*".to_string()));
                i += 1;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                loop {
                    match toks.get(i) {
                        Some(Tok::Punct('}')) => {
                            i += 1;
                            break;
                        }
                        Some(Tok::Punct(',')) => i += 1,
                        None => return i,
                        _ => i = use_tree(toks, i, prefix.clone(), out),
                    }
                }
            }
            _ => {}
        }
        // Skip `as name`, then stop at `,`, `}` or `;`.
        if ident(toks.get(i)) == Some("as") {
            if let (Some(last), Some(alias)) = (out.last_mut(), ident(toks.get(i + 1))) {
                last.1 = alias.to_string();
            }
            i += 2;
        }
        if toks.get(i) == Some(&Tok::Punct(';')) {
            i += 1;
        }
        return i;
    }
}

/// `path` as seen from module `here`, from the crate root; `None` when it
/// leaves the crate.
fn absolute(
    here: &[String],
    path: &[String],
    files: &BTreeMap<Vec<String>, PathBuf>,
) -> Option<Vec<String>> {
    let (first, rest) = path.split_first()?;
    let mut base: Vec<String> = match first.as_str() {
        "crate" | "$crate" => Vec::new(),
        "self" => here.to_vec(),
        "super" => {
            let mut b = here.to_vec();
            b.pop();
            let mut rest = rest;
            while rest.first().map(String::as_str) == Some("super") {
                b.pop();
                rest = &rest[1..];
            }
            b.extend(rest.iter().cloned());
            return Some(b);
        }
        name => {
            // A child module of this one, named without `self::`.
            let mut child = here.to_vec();
            child.push(name.to_string());
            if !files.contains_key(&child) {
                return None;
            }
            return Some(child.into_iter().chain(rest.iter().cloned()).collect());
        }
    };
    base.extend(rest.iter().cloned());
    Some(base)
}
