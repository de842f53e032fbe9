//! The documentation keeps its promises: the README stays short and has the
//! four sections a reader looks for, and every link in the repository's
//! Markdown files leads to a file in the repository.

use std::path::{Path, PathBuf};

use crate::support::edge::repo;

/// The Markdown files of the repository (outside target/ and .git/).
fn markdown_files() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![repo().to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                if !matches!(name.to_str(), Some("target" | ".git")) {
                    pending.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "md") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The targets of the Markdown links (`[text](target)`) in `text`, outside
/// code blocks and code spans.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            continue;
        }
        // Code spans hold examples, not links.
        let prose: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, part)| part)
            .collect();
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            targets.push(after[..end].trim().to_owned());
            rest = &after[end..];
        }
        let mut rest = prose.as_str();
        while let Some(at) = rest.find('<') {
            let after = &rest[at + 1..];
            let Some(end) = after.find('>') else { break };
            let inner = &after[..end];
            if inner.contains("://") {
                targets.push(inner.to_owned());
            }
            rest = &after[end..];
        }
    }
    targets
}

#[test]
fn the_readme_is_at_most_200_lines_with_the_four_sections() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let lines = readme.lines().count();
    assert!(lines <= 200, "README.md has {lines} lines");
    for section in [
        "## Prerequisites",
        "## How to Run",
        "## How to Test",
        "## Architecture Notes",
    ] {
        assert!(
            readme.lines().any(|l| l.trim_end() == section),
            "README.md has no {section:?} section"
        );
    }
    // The test command it gives is the one CI runs.
    assert!(readme.contains("```bash\ncargo test\n```"));
}

#[test]
fn every_markdown_link_leads_to_a_file_in_the_repository() {
    let files = markdown_files();
    assert!(files.len() >= 7, "{files:?}");
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("a Markdown file");
        let dir = file.parent().unwrap_or(Path::new("."));
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                broken.push(format!(
                    "{}: {target} leaves the repository",
                    file.display()
                ));
                continue;
            }
            let path = target.split('#').next().unwrap_or("");
            if path.is_empty() {
                continue; // an anchor in the same file
            }
            let resolved = dir.join(path);
            let inside = resolved
                .canonicalize()
                .is_ok_and(|real| real.starts_with(repo().canonicalize().unwrap()));
            if !inside {
                broken.push(format!("{}: {target} is not a file here", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

#[test]
fn the_link_reader_finds_links_and_skips_code() {
    let text =
        "see [a](docs/a.md#x) and <https://example.com>\n`[b](no.md)`\n```\n[c](no.md)\n```\n";
    assert_eq!(
        link_targets(text),
        ["docs/a.md#x".to_owned(), "https://example.com".to_owned()]
    );
}
