//! The crate's layering, as `src/lib.rs` states it, holds: every `crate::` (or `super::`) path in
//! a module's non-test code names a module of a lower layer, and neither the top-level modules
//! nor the files of one folder module (`operations/tombstones.rs`, `operations/commit/`, …, and
//! one level further down, `operations/commit/merge.rs`, `operations/commit/create.rs`, …) use
//! each other in a cycle. Read from the source text, so a new import that breaks the order
//! fails here before anyone has to find the cycle by reading.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file below `dir` with its module path (`["operations", "commit"]`).
fn modules(dir: &Path, prefix: &[String], out: &mut Vec<(Vec<String>, PathBuf)>) {
    let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            let mut next = prefix.to_vec();
            next.push(name);
            modules(&p, &next, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            // Unit tests in their own file (`tests.rs`) may take fixtures from anywhere.
            if name == "tests" || (prefix.is_empty() && name == "lib") {
                continue;
            }
            let mut path = prefix.to_vec();
            if name != "mod" {
                path.push(name);
            }
            out.push((path, p));
        }
    }
}

/// The file's code without comments and without its `#[cfg(test)] mod tests` (test code may
/// use fixtures from any module).
fn code(text: &str) -> String {
    let mut out = String::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if t == "#[cfg(test)]"
            && lines
                .get(i + 1)
                .is_some_and(|n| n.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line.split(" // ").next().unwrap_or(""));
        out.push('\n');
    }
    out
}

fn ident(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// The text of the brace group `s` starts with (without the braces) and what follows it.
fn group(s: &str) -> (&str, &str) {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return (&s[1..i], &s[i + 1..]);
                }
            }
            _ => {}
        }
    }
    (&s[1..], "")
}

/// Splits a use group's items at its top-level commas.
fn items(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out.into_iter().filter(|i| !i.is_empty()).collect()
}

/// The module paths (up to three segments) a path starting at `rest` (after `crate::`) names,
/// `base` being the segments already read.
fn paths(base: &[String], rest: &str, out: &mut BTreeSet<Vec<String>>) {
    let rest = rest.trim_start();
    if rest.starts_with('{') {
        let (inner, _) = group(rest);
        for item in items(inner) {
            paths(base, item, out);
        }
        return;
    }
    let (name, after) = ident(rest);
    if name.is_empty() || name == "self" {
        if !base.is_empty() {
            out.insert(base.to_vec());
        }
        return;
    }
    let mut next = base.to_vec();
    next.push(name.to_string());
    match after.strip_prefix("::") {
        Some(more) if next.len() < 3 => paths(&next, more, out),
        _ => {
            out.insert(next);
        }
    }
}

/// The module paths `code` names through `crate::` and `super::`, for a file at `module`.
fn references(module: &[String], code: &str) -> BTreeSet<Vec<String>> {
    let mut out = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        paths(&[], &code[at + "crate::".len()..], &mut out);
    }
    for (at, _) in code.match_indices("super::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') || module.len() < 2 {
            continue;
        }
        let parent = module[..module.len() - 1].to_vec();
        paths(&parent, &code[at + "super::".len()..], &mut out);
    }
    out
}

/// The first cycle found in `edges`, if any.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut c = stack[from..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if !state.contains_key(n) {
            if let Some(c) = visit(n, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

struct Graph {
    /// Top-level module -> the top-level modules it uses.
    top: BTreeMap<String, BTreeSet<String>>,
    /// `folder::file` -> the files of the same folder module it uses, and likewise
    /// `folder::sub::file` for the files of a folder inside a folder.
    inner: BTreeMap<String, BTreeSet<String>>,
    /// Where each edge was seen, for the failure message.
    seen_in: BTreeMap<(String, String), String>,
}

fn graph() -> Graph {
    let root = src();
    let mut files = Vec::new();
    modules(&root, &[], &mut files);
    let is_submodule = |m: &[String]| {
        m.len() >= 2
            && (root.join(&m[0]).join(format!("{}.rs", m[1])).is_file() || root.join(&m[0]).join(&m[1]).is_dir())
    };
    let is_nested_file = |m: &[String]| {
        m.len() >= 3 && root.join(&m[0]).join(&m[1]).is_dir() && {
            let folder = root.join(&m[0]).join(&m[1]);
            folder.join(format!("{}.rs", m[2])).is_file() || folder.join(&m[2]).is_dir()
        }
    };
    let mut g = Graph {
        top: BTreeMap::new(),
        inner: BTreeMap::new(),
        seen_in: BTreeMap::new(),
    };
    for (module, file) in &files {
        let text = fs::read_to_string(file).unwrap();
        let from = module[0].clone();
        g.top.entry(from.clone()).or_default();
        let shown = file.strip_prefix(&root).unwrap().display().to_string();
        for r in references(module, &code(&text)) {
            if r[0] != from {
                g.top.entry(from.clone()).or_default().insert(r[0].clone());
                g.seen_in
                    .entry((from.clone(), r[0].clone()))
                    .or_insert_with(|| shown.clone());
            } else if is_submodule(module) && is_submodule(&r) && r[1] != module[1] {
                let (a, b) = (module[..2].join("::"), r[..2].join("::"));
                g.inner.entry(a.clone()).or_default().insert(b.clone());
                g.seen_in.entry((a, b)).or_insert_with(|| shown.clone());
            } else if is_nested_file(module) && is_nested_file(&r) && r[1] == module[1] && r[2] != module[2] {
                let (a, b) = (module[..3].join("::"), r[..3].join("::"));
                g.inner.entry(a.clone()).or_default().insert(b.clone());
                g.seen_in.entry((a, b)).or_insert_with(|| shown.clone());
            }
        }
    }
    g
}

/// The layers `lib.rs` declares: lines `//! N. ...` naming modules in backticks, bottom first.
fn declared_layers() -> BTreeMap<String, usize> {
    let lib = fs::read_to_string(src().join("lib.rs")).unwrap();
    let mut layers = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.strip_prefix("//! ") else {
            continue;
        };
        let (n, after) = rest.split_once(". ").unwrap_or(("", ""));
        let Ok(n) = n.parse::<usize>() else { continue };
        // Only the names before the colon: the description after it may name modules in passing.
        let names = after.split_once(':').map_or(after, |(names, _)| names);
        for name in names.split('`').skip(1).step_by(2) {
            assert!(
                layers.insert(name.to_string(), n).is_none(),
                "lib.rs lists `{name}` in two layers"
            );
        }
    }
    layers
}

fn declared_modules() -> BTreeSet<String> {
    let lib = fs::read_to_string(src().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.strip_prefix("pub mod ").or_else(|| l.strip_prefix("mod ")))
        .map(|l| l.trim_end_matches(';').to_string())
        .collect()
}

#[test]
fn no_module_cycle() {
    let g = graph();
    assert!(g.top.len() > 20, "the walk found too few modules: {:?}", g.top.keys());
    assert!(
        g.inner.contains_key("operations::commit"),
        "the walk found no uses between operations' files: {:?}",
        g.inner
    );
    assert!(
        g.inner.contains_key("operations::commit::merge"),
        "the walk found no uses between the commit folder's files: {:?}",
        g.inner
    );
    for (what, edges) in [("top-level modules", &g.top), ("files of one folder module", &g.inner)] {
        if let Some(c) = cycle(edges) {
            let steps: Vec<String> = c
                .windows(2)
                .map(|w| {
                    let at = g
                        .seen_in
                        .get(&(w[0].clone(), w[1].clone()))
                        .cloned()
                        .unwrap_or_default();
                    format!("{} -> {} (in {at})", w[0], w[1])
                })
                .collect();
            panic!("import cycle among {what}:\n  {}", steps.join("\n  "));
        }
    }
}

#[test]
fn every_module_uses_only_lower_layers() {
    let layers = declared_layers();
    let modules = declared_modules();
    let listed: BTreeSet<String> = layers.keys().cloned().collect();
    assert_eq!(
        listed, modules,
        "lib.rs's layer list and its `mod` lines name different modules"
    );
    let g = graph();
    let mut wrong = Vec::new();
    for (from, tos) in &g.top {
        for to in tos {
            let (Some(a), Some(b)) = (layers.get(from), layers.get(to)) else {
                wrong.push(format!("{from} -> {to}: not in lib.rs's layer list"));
                continue;
            };
            if b >= a {
                let at = g.seen_in.get(&(from.clone(), to.clone())).cloned().unwrap_or_default();
                wrong.push(format!("{from} (layer {a}) uses {to} (layer {b}) in {at}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "uses that break lib.rs's layering:\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn the_reader_sees_grouped_and_relative_paths() {
    let here = vec!["operations".to_string(), "commit".to_string()];
    let found = references(
        &here,
        &code(
            "use crate::operations::{change_feed, floor::{a, b}};\nuse crate::{error::Error, model};\n\
             // crate::sim::x is a comment\nlet x = super::widen::w();\n",
        ),
    );
    let want: BTreeSet<Vec<String>> = [
        vec!["operations", "change_feed"],
        vec!["operations", "floor", "a"],
        vec!["operations", "floor", "b"],
        vec!["error", "Error"],
        vec!["model"],
        vec!["operations", "widen", "w"],
    ]
    .into_iter()
    .map(|v| v.into_iter().map(str::to_string).collect())
    .collect();
    assert_eq!(found, want);
    let mut edges = BTreeMap::new();
    edges.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    edges.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    assert!(cycle(&edges).is_some());
    edges.remove("b");
    assert!(cycle(&edges).is_none());
}
