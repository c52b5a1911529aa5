//! The shape of the layer references: every layer is used exactly once and the
//! layers form a tree rooted at `device.top`. Finds dangling names, layers used
//! twice, cycles and unused layers, each reported where the user must edit.

use std::collections::HashMap;

use super::error::{Problems, Span};
use super::suggest::closest;

/// A layer name written in `device.top`, `over`, `legs` or `stripes`.
#[derive(Clone, Debug)]
pub struct Reference {
    pub name: String,
    pub span: Span,
    /// `over`, `legs`, … for messages.
    pub key: &'static str,
}

/// A layer as the graph sees it.
pub struct Node {
    pub name: String,
    pub header: Span,
    pub references: Vec<Reference>,
}

/// Who uses a layer: the device (as `top`) or another layer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum User {
    Top,
    Layer(usize),
}

/// Reports every structural problem. `top` is `None` when `device.top` is
/// missing or not a string (already reported), which skips the unused check.
pub fn check(nodes: &[Node], top: Option<&Reference>, problems: &mut Problems) {
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(id, node)| (node.name.as_str(), id))
        .collect();
    // Names that nothing refers to yet: a misspelt reference most likely
    // meant one of these, so they are suggested first.
    let mut referenced = vec![false; nodes.len()];
    let all_references = nodes
        .iter()
        .flat_map(|node| node.references.iter())
        .chain(top);
    for reference in all_references {
        if let Some(&id) = index.get(reference.name.as_str()) {
            referenced[id] = true;
        }
    }
    let suggest = |name: &str| {
        let unreferenced = nodes
            .iter()
            .zip(&referenced)
            .filter(|(_, referenced)| !**referenced)
            .map(|(node, _)| node.name.as_str());
        closest(name, unreferenced)
            .or_else(|| closest(name, nodes.iter().map(|node| node.name.as_str())))
    };

    // Resolved edges (parent, child, reference); dangling ones are reported.
    let mut edges: Vec<Vec<(usize, &Reference)>> = vec![Vec::new(); nodes.len()];
    for (parent, node) in nodes.iter().enumerate() {
        for reference in &node.references {
            match index.get(reference.name.as_str()) {
                Some(&child) if child == parent => problems.at_layer(
                    &reference.span,
                    &node.name,
                    format!(
                        "{} names this layer itself; a layer must be stacked over another layer",
                        reference.key
                    ),
                ),
                Some(&child) => edges[parent].push((child, reference)),
                None => problems.at_layer(
                    &reference.span,
                    &node.name,
                    dangling_message(reference, suggest(&reference.name), nodes),
                ),
            }
        }
    }
    let top_id = top.and_then(|reference| {
        let found = index.get(reference.name.as_str()).copied();
        if found.is_none() && !nodes.is_empty() {
            problems.at(
                &reference.span,
                dangling_message(reference, suggest(&reference.name), nodes),
            );
        }
        found
    });

    let cycle_edges = report_cycles(nodes, &edges, problems);
    report_reuse(nodes, &edges, &cycle_edges, top_id, top, problems);
    if let Some(top_id) = top_id {
        report_unused(nodes, &edges, top_id, problems);
        report_depth(nodes, &edges, top_id, problems);
    }
}

/// The most layers a device may stack, counting `device.top` and the leaf.
/// Opening, flushing and every request walk the tree, so its depth bounds
/// their cost and the stack they use.
pub const MAX_DEPTH: usize = 64;

/// A tree deeper than [`MAX_DEPTH`] is reported once, at the reference that
/// goes one layer too deep.
fn report_depth(
    nodes: &[Node],
    edges: &[Vec<(usize, &Reference)>],
    top_id: usize,
    problems: &mut Problems,
) {
    // Breadth first from the top; a node seen twice (a cycle or a reuse,
    // both reported already) is not walked again.
    let mut seen = vec![false; nodes.len()];
    seen[top_id] = true;
    let mut level = vec![top_id];
    for depth in 1..=nodes.len() {
        let mut next = Vec::new();
        for &parent in &level {
            for &(child, reference) in &edges[parent] {
                if std::mem::replace(&mut seen[child], true) {
                    continue;
                }
                if depth == MAX_DEPTH {
                    problems.at_layer(
                        &reference.span,
                        &nodes[parent].name,
                        format!(
                            "the layer tree is more than {MAX_DEPTH} layers deep here; \
                             at most {MAX_DEPTH} layers can be stacked"
                        ),
                    );
                    return;
                }
                next.push(child);
            }
        }
        if next.is_empty() {
            return;
        }
        level = next;
    }
}

fn dangling_message(reference: &Reference, suggestion: Option<&str>, nodes: &[Node]) -> String {
    let mut message = format!(
        "{} names \"{}\", but there is no layer of that name",
        reference.key, reference.name
    );
    match suggestion {
        Some(suggestion) => message.push_str(&format!(" (did you mean \"{suggestion}\"?)")),
        None if nodes.len() <= 8 => {
            let all: Vec<_> = nodes.iter().map(|node| node.name.as_str()).collect();
            message.push_str(&format!("; the layers are: {}", all.join(", ")));
        }
        None => {}
    }
    message
}

/// Depth-first search over the references; each back edge closes a cycle,
/// reported once at the reference that closes it. Returns those edges so they
/// are not also reported as "used twice".
fn report_cycles(
    nodes: &[Node],
    edges: &[Vec<(usize, &Reference)>],
    problems: &mut Problems,
) -> Vec<(usize, usize)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut marks = vec![Mark::New; nodes.len()];
    let mut back_edges = Vec::new();
    for start in 0..nodes.len() {
        if marks[start] != Mark::New {
            continue;
        }
        // Explicit stack of (node, next edge index) so deep trees cannot
        // overflow the thread stack.
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        marks[start] = Mark::OnPath;
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            let Some(&(child, reference)) = edges[node].get(*next) else {
                marks[node] = Mark::Done;
                path.pop();
                continue;
            };
            *next += 1;
            match marks[child] {
                Mark::New => {
                    marks[child] = Mark::OnPath;
                    path.push((child, 0));
                }
                Mark::OnPath => {
                    let from = path.iter().position(|&(id, _)| id == child).unwrap_or(0);
                    let mut cycle: Vec<&str> = path[from..]
                        .iter()
                        .map(|&(id, _)| nodes[id].name.as_str())
                        .collect();
                    cycle.push(&nodes[child].name);
                    problems.at_layer(
                        &reference.span,
                        &nodes[node].name,
                        format!(
                            "{} \"{}\" makes a cycle: {}; layers must form a tree",
                            reference.key,
                            reference.name,
                            cycle.join(" -> ")
                        ),
                    );
                    back_edges.push((node, child));
                }
                Mark::Done => {}
            }
        }
    }
    back_edges
}

/// A layer may sit under only one parent (or be `device.top`).
fn report_reuse(
    nodes: &[Node],
    edges: &[Vec<(usize, &Reference)>],
    cycle_edges: &[(usize, usize)],
    top_id: Option<usize>,
    top: Option<&Reference>,
    problems: &mut Problems,
) {
    let mut first_user: Vec<Option<(User, Span)>> = vec![None; nodes.len()];
    if let (Some(top_id), Some(top)) = (top_id, top) {
        first_user[top_id] = Some((User::Top, top.span.clone()));
    }
    // Visit references in file order, so the later one is the one reported.
    let mut uses: Vec<(usize, usize, &Reference)> = edges
        .iter()
        .enumerate()
        .flat_map(|(parent, children)| {
            children
                .iter()
                .map(move |&(child, reference)| (parent, child, reference))
        })
        .filter(|(parent, child, _)| !cycle_edges.contains(&(*parent, *child)))
        .collect();
    uses.sort_by_key(|(_, _, reference)| reference.span.start);
    for (parent, child, reference) in uses {
        let message = match &first_user[child] {
            None => {
                first_user[child] = Some((User::Layer(parent), reference.span.clone()));
                continue;
            }
            Some((User::Top, _)) => format!(
                "{} names \"{}\", which is already device.top; a layer can be used only once",
                reference.key, reference.name
            ),
            Some((User::Layer(user), _)) if *user == parent => format!(
                "{} names \"{}\" twice; a layer can be used only once",
                reference.key, reference.name
            ),
            Some((User::Layer(user), _)) => format!(
                "{} names \"{}\", which is already used by layer \"{}\"; a layer can be used only once",
                reference.key, reference.name, nodes[*user].name
            ),
        };
        problems.at_layer(&reference.span, &nodes[parent].name, message);
    }
}

/// Layers not reachable from `top`. Only the highest unused layer of each
/// unused branch is reported, naming the layers below it, so one forgotten
/// subtree is one message.
fn report_unused(
    nodes: &[Node],
    edges: &[Vec<(usize, &Reference)>],
    top_id: usize,
    problems: &mut Problems,
) {
    let reachable = reach(edges, &[top_id], nodes.len());
    let mut referenced = vec![false; nodes.len()];
    for children in edges {
        for &(child, _) in children {
            referenced[child] = true;
        }
    }
    for (id, node) in nodes.iter().enumerate() {
        if reachable[id] || referenced[id] {
            continue;
        }
        let below = reach(edges, &[id], nodes.len());
        let below: Vec<&str> = (0..nodes.len())
            .filter(|&other| other != id && below[other] && !reachable[other])
            .map(|other| nodes[other].name.as_str())
            .collect();
        let mut message =
            "is not used: it is not device.top and no layer is stacked over it".to_string();
        if !below.is_empty() {
            message.push_str(&format!(
                " (nor are the layers below it: {})",
                below.join(", ")
            ));
        }
        message.push_str("; remove it or reference it from over, legs or stripes");
        problems.at_layer(&node.header, &node.name, message);
    }
}

fn reach(edges: &[Vec<(usize, &Reference)>], from: &[usize], count: usize) -> Vec<bool> {
    let mut seen = vec![false; count];
    let mut stack = from.to_vec();
    while let Some(id) = stack.pop() {
        if std::mem::replace(&mut seen[id], true) {
            continue;
        }
        stack.extend(edges[id].iter().map(|&(child, _)| child));
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, at: usize, references: &[(&str, usize)]) -> Node {
        Node {
            name: name.into(),
            header: at..at + 1,
            references: references
                .iter()
                .map(|&(name, at)| Reference {
                    name: name.into(),
                    span: at..at + 1,
                    key: "over",
                })
                .collect(),
        }
    }

    fn messages(nodes: &[Node], top: &str) -> Vec<String> {
        let mut problems = Problems::default();
        let top = Reference {
            name: top.into(),
            span: 0..1,
            key: "device.top",
        };
        check(nodes, Some(&top), &mut problems);
        problems
            .into_errors("f", &" ".repeat(1000))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_tree_has_no_problems() {
        let nodes = [node("a", 10, &[("b", 11)]), node("b", 20, &[])];
        assert!(messages(&nodes, "a").is_empty());
    }

    #[test]
    fn a_cycle_is_reported_once_with_its_path() {
        let nodes = [node("a", 10, &[("b", 11)]), node("b", 20, &[("a", 21)])];
        let found = messages(&nodes, "a");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("cycle: a -> b -> a"), "{found:?}");
    }

    #[test]
    fn unused_branch_is_one_message_naming_the_layers_below() {
        let nodes = [
            node("a", 10, &[]),
            node("x", 20, &[("y", 21)]),
            node("y", 30, &[]),
        ];
        let found = messages(&nodes, "a");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("layer \"x\": is not used"), "{found:?}");
        assert!(found[0].contains("below it: y"), "{found:?}");
    }

    #[test]
    fn misspelt_reference_suggests_the_layer_nothing_uses_yet() {
        let nodes = [
            node("m", 10, &[("disk0", 11), ("disk2", 12)]),
            node("disk0", 20, &[]),
            node("disk1", 30, &[]),
        ];
        let found = messages(&nodes, "m");
        assert!(found[0].contains("(did you mean \"disk1\"?)"), "{found:?}");
    }

    /// `count` layers, each over the next: `l0` (the top) over `l1` … over
    /// the last.
    fn chain(count: usize) -> Vec<Node> {
        (0..count)
            .map(|i| {
                let below = format!("l{}", i + 1);
                let references = if i + 1 < count {
                    vec![(below.as_str(), i * 10 + 1)]
                } else {
                    vec![]
                };
                node(&format!("l{i}"), i * 10, &references)
            })
            .collect()
    }

    #[test]
    fn a_tree_of_the_maximum_depth_is_allowed_and_one_more_is_refused() {
        assert!(messages(&chain(MAX_DEPTH), "l0").is_empty());
        let found = messages(&chain(MAX_DEPTH + 1), "l0");
        assert_eq!(found.len(), 1, "{found:?}");
        let parent = format!("layer \"l{}\"", MAX_DEPTH - 1);
        assert!(found[0].contains(&parent), "{found:?}");
        assert!(found[0].contains("more than 64 layers deep"), "{found:?}");
    }

    #[test]
    fn second_parent_is_reported() {
        let nodes = [
            node("m", 10, &[("a", 11), ("b", 12)]),
            node("b", 20, &[("a", 21)]),
            node("a", 30, &[]),
        ];
        let found = messages(&nodes, "m");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("already used by layer \"m\""),
            "{found:?}"
        );
    }
}
