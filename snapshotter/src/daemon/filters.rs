//! containerd's list filters for snapshots: `field==value`,
//! `field!=value`, or a bare `field` (present), over `name`, `parent`,
//! `kind` and `labels.KEY` (`labels."KEY"` when the key has dots or other
//! punctuation); `,` joins conditions that must all hold. Several filters
//! match a snapshot when any of them does.

use crate::daemon::records::Snapshot;
use slayerfs_proto::store::SnapshotKind;

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
}

#[derive(Debug, Clone, PartialEq)]
struct Condition {
    field: Vec<String>,
    op: Op,
}

/// One filter: conditions that must all hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter(Vec<Condition>);

/// Splits `s` at `sep` outside double quotes.
fn split_outside_quotes(s: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            escaped = false;
        } else if c == '\\' && quoted {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(String::new());
            continue;
        }
        if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

fn unquote(s: &str) -> Result<String, String> {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('"') {
        let inner = inner
            .strip_suffix('"')
            .ok_or_else(|| format!("unterminated quote in {s}"))?;
        Ok(inner.replace("\\\"", "\"").replace("\\\\", "\\"))
    } else {
        Ok(s.to_string())
    }
}

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, String> {
        let mut conditions = Vec::new();
        for part in split_outside_quotes(text, ',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, op) = if let Some(i) = find_op(part, "!=") {
                (&part[..i], Op::NotEqual(unquote(&part[i + 2..])?))
            } else if let Some(i) = find_op(part, "==") {
                (&part[..i], Op::Equal(unquote(&part[i + 2..])?))
            } else if find_op(part, "~=").is_some() {
                return Err(format!(
                    "filter {text}: regular expressions (~=) are not supported"
                ));
            } else {
                (part, Op::Present)
            };
            let field = split_outside_quotes(field.trim(), '.')
                .iter()
                .map(|f| unquote(f))
                .collect::<Result<Vec<_>, _>>()?;
            match field.first().map(String::as_str) {
                Some("name" | "parent" | "kind") if field.len() == 1 => {}
                Some("labels") if field.len() >= 2 => {}
                _ => return Err(format!("filter {text}: unknown field {}", field.join("."))),
            }
            conditions.push(Condition { field, op });
        }
        if conditions.is_empty() {
            return Err(format!("filter {text:?} is empty"));
        }
        Ok(Filter(conditions))
    }

    pub fn matches(&self, s: &Snapshot) -> bool {
        self.0.iter().all(|c| {
            let value = match c.field[0].as_str() {
                "name" => Some(s.key.clone()),
                "parent" => Some(s.parent.clone()),
                "kind" => Some(
                    match s.kind {
                        SnapshotKind::Active => "active",
                        SnapshotKind::View => "view",
                        SnapshotKind::Committed => "committed",
                        SnapshotKind::Unspecified => "unknown",
                    }
                    .to_string(),
                ),
                _ => s.labels.get(&c.field[1..].join(".")).cloned(),
            };
            match &c.op {
                Op::Present => value.is_some_and(|v| !v.is_empty()),
                Op::Equal(want) => value.as_deref() == Some(want.as_str()),
                Op::NotEqual(want) => value.as_deref() != Some(want.as_str()),
            }
        })
    }
}

/// What the `list_filter` fuzz target (and the replay of its corpus)
/// checks: any bytes that are UTF-8 parse to a filter or an error, and a
/// filter matches a snapshot or not, never a panic.
pub fn fuzz_one(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(filter) = Filter::parse(text) {
        let snapshot = Snapshot {
            key: "default/1/a".into(),
            id: 1,
            kind: SnapshotKind::Active,
            parent: "p".into(),
            labels: [("a.b".to_string(), "c".to_string())].into(),
            created: std::time::SystemTime::UNIX_EPOCH,
            updated: std::time::SystemTime::UNIX_EPOCH,
            layer: String::new(),
        };
        let _ = filter.matches(&snapshot);
    }
}

/// The position of `op` outside quotes.
fn find_op(s: &str, op: &str) -> Option<usize> {
    let mut quoted = false;
    let bytes = s.as_bytes();
    for i in 0..bytes.len() {
        if bytes[i] == b'"' {
            quoted = !quoted;
        } else if !quoted && bytes[i..].starts_with(op.as_bytes()) {
            // (An operator is ASCII: where it starts is a char boundary.)
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    fn snap(key: &str, parent: &str, kind: SnapshotKind, labels: &[(&str, &str)]) -> Snapshot {
        Snapshot {
            key: key.into(),
            id: 1,
            kind,
            parent: parent.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
            layer: String::new(),
        }
    }

    #[test]
    fn containerd_filters_match_as_containerd_does() {
        let s = snap(
            "k1",
            "base",
            SnapshotKind::Active,
            &[("containerd.io/snapshot.ref", "sha256:abc"), ("x", "1")],
        );
        let yes = [
            "name==k1",
            "parent==base,kind==active",
            r#"labels."containerd.io/snapshot.ref"==sha256:abc"#,
            r#"labels."containerd.io/snapshot.ref""#,
            "labels.x",
            "labels.x!=2",
            r#"name=="k1""#,
        ];
        let no = [
            "name==k2",
            "kind==committed",
            "labels.y",
            "labels.x==2,name==k1",
        ];
        for f in yes {
            assert!(Filter::parse(f).unwrap().matches(&s), "{f}");
        }
        for f in no {
            assert!(!Filter::parse(f).unwrap().matches(&s), "{f}");
        }
        // Any UTF-8 parses or is refused, never a panic (slicing at a byte
        // inside a character once did).
        for text in [
            "name==ü",
            "labels.ü==é",
            "ü",
            "labels.\u{1F600}!=\u{1F600}",
            "ééé==",
            "name\u{0}==x",
        ] {
            let _ = Filter::parse(text);
        }
        let f = Filter::parse("labels.ü==é").unwrap();
        assert!(f.matches(&snap("a", "", SnapshotKind::Active, &[("ü", "é")])));
        for bad in ["", "bogus==1", "name~=k.*", r#"labels."open==1"#] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
    }
}
