//! The source layout keeps its promises: no two modules of a crate use each
//! other (a module using its parent's or its children's items is fine), the
//! daemon's modules use nothing of the CLI's, and no source file grows past
//! what a reader takes in at once.
//!
//! Read from the sources: each file's `crate::` and `super::` paths outside
//! comments, lifted to the modules they name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest file a module may have.
const MAX_LINES: usize = 650;
/// The workspace's crates.
const CRATES: [&str; 6] = [
    "config",
    "proto",
    "chunkstore",
    "layerfs",
    "snapshotter",
    "integration",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file under `src` (`store/layers.rs` → `store::layers`,
/// `store/mod.rs` → `store`, `lib.rs` → ``); binaries are left out.
fn module_of(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?;
    if rel.starts_with("bin") {
        return None;
    }
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    Some(parts)
}

/// Paths a file names, as module paths with items at the end (`crate::a::b::C`
/// → `[a, b, C]`), `super::` resolved against `module`; comments skipped.
fn named_paths(text: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let parent = module[..module.len().saturating_sub(1)].to_vec();
        for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
            let mut rest = code;
            while let Some(i) = rest.find(prefix) {
                let before = rest[..i].chars().last();
                rest = &rest[i + prefix.len()..];
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let path: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let mut parts = base.clone();
                parts.extend(
                    path.split("::")
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                );
                // `use crate::{a, b}` names several: take the modules listed.
                if path.is_empty() || path.ends_with("::") {
                    if let Some(list) = rest.strip_prefix(&path).and_then(|r| r.strip_prefix('{')) {
                        for item in list.split('}').next().unwrap_or("").split(',') {
                            let item = item.trim().split("::").next().unwrap_or("").trim();
                            if !item.is_empty() {
                                let mut p = parts.clone();
                                p.push(item.to_string());
                                out.push(p);
                            }
                        }
                        continue;
                    }
                }
                out.push(parts);
            }
        }
    }
    out
}

/// Every module of a crate and the modules each one uses.
fn crate_graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().filter_map(|f| module_of(src, f)).collect();
    let mut graph = BTreeMap::new();
    for f in &files {
        let Some(m) = module_of(src, f) else { continue };
        let text = std::fs::read_to_string(f).unwrap();
        let uses: &mut BTreeSet<Vec<String>> = graph.entry(m.clone()).or_default();
        for p in named_paths(&text, &m) {
            // The longest prefix that is a module of the crate.
            let target = (1..=p.len())
                .rev()
                .map(|n| p[..n].to_vec())
                .find(|c| modules.contains(c));
            if let Some(t) = target {
                if t != m {
                    uses.insert(t);
                }
            }
        }
    }
    graph
}

fn is_prefix(a: &[String], b: &[String]) -> bool {
    b.len() >= a.len() && b[..a.len()] == *a
}

/// Pairs of modules, neither inside the other, that use each other — seen
/// at the level where they part (`a::x` using `b::y` is `a` using `b`).
fn cycles(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<String> {
    let mut edges: BTreeSet<(Vec<String>, Vec<String>)> = BTreeSet::new();
    for (from, tos) in graph {
        for to in tos {
            if is_prefix(from, to) || is_prefix(to, from) {
                continue;
            }
            let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
            edges.insert((from[..=common].to_vec(), to[..=common].to_vec()));
        }
    }
    edges
        .iter()
        .filter(|(a, b)| a < b && edges.contains(&(b.clone(), a.clone())))
        .map(|(a, b)| format!("{} <-> {}", a.join("::"), b.join("::")))
        .collect()
}

#[test]
fn no_module_uses_a_module_that_uses_it() {
    let root = workspace();
    let mut found = Vec::new();
    for krate in CRATES {
        let graph = crate_graph(&root.join(krate).join("src"));
        assert!(!graph.is_empty(), "{krate}: no modules read");
        found.extend(cycles(&graph).into_iter().map(|c| format!("{krate}: {c}")));
    }
    assert!(found.is_empty(), "module cycles:\n{}", found.join("\n"));
}

#[test]
fn the_daemon_uses_nothing_of_the_cli() {
    let graph = crate_graph(&workspace().join("snapshotter/src"));
    let daemon = vec!["daemon".to_string()];
    let cli = vec!["cli".to_string()];
    assert!(graph.contains_key(&daemon) && graph.contains_key(&cli));
    let bad: Vec<String> = graph
        .iter()
        .filter(|(m, _)| is_prefix(&daemon, m))
        .flat_map(|(m, uses)| {
            uses.iter()
                .filter(|u| is_prefix(&cli, u))
                .map(move |u| format!("{} uses {}", m.join("::"), u.join("::")))
        })
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn no_source_file_is_too_long_to_read() {
    let root = workspace();
    let mut files = Vec::new();
    for krate in CRATES {
        rust_files(&root.join(krate), &mut files);
    }
    let long: Vec<String> = files
        .iter()
        .filter(|f| !f.components().any(|c| c.as_os_str() == "target"))
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).ok()?.lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split these:\n{}", long.join("\n"));
}
