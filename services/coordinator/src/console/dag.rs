//! A workflow's steps drawn as an SVG graph, layered by dependency depth: a step sits one
//! column right of the deepest step it waits for, whether it waits by `dependsOn` (solid
//! arrows) or by its phase (dashed: every step of a phase waits for the phase before it, and a
//! sequential phase's steps for the one listed before). Each node is `node-<step id>`, with its
//! status as a class, so the script can restyle it as events arrive.

use std::collections::{BTreeSet, HashMap};

use maud::{Markup, html};
use serde_json::Value;

const NODE_W: i64 = 190;
const NODE_H: i64 = 46;
const GAP_X: i64 = 56;
const GAP_Y: i64 = 18;

/// A step as the graph needs it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub id: String,
    pub name: String,
    pub step_type: String,
}

/// The graph of a workflow configuration: nodes in their listed order, and the edges
/// `(from, to, by_phase)` between their indices.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<(usize, usize, bool)>,
}

impl Graph {
    /// Reads `steps` and `phases` of a workflow's `configuration`; what it cannot read (an
    /// unknown step in a phase) is left out, as validation refused it at creation anyway.
    pub(crate) fn of(configuration: &Value) -> Self {
        let text = |v: &Value, key: &str| v[key].as_str().unwrap_or_default().to_owned();
        let steps = configuration["steps"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let nodes: Vec<Node> = steps
            .iter()
            .map(|s| Node {
                id: text(s, "id"),
                name: text(s, "name"),
                step_type: text(s, "type"),
            })
            .collect();
        let index: HashMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.as_str(), i))
            .collect();
        let ids = |v: &Value| -> Vec<usize> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|id| id.as_str().and_then(|id| index.get(id).copied()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut edges = BTreeSet::new();
        for (to, step) in steps.iter().enumerate() {
            for from in ids(&step["dependsOn"]) {
                edges.insert((from, to, false));
            }
        }
        let phases = configuration["phases"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut previous: Vec<usize> = Vec::new();
        for phase in &phases {
            let members = ids(&phase["steps"]);
            for &to in &members {
                for &from in &previous {
                    if !edges.contains(&(from, to, false)) {
                        edges.insert((from, to, true));
                    }
                }
            }
            if phase["mode"].as_str() == Some("sequential") {
                for pair in members.windows(2) {
                    if !edges.contains(&(pair[0], pair[1], false)) {
                        edges.insert((pair[0], pair[1], true));
                    }
                }
            }
            previous = members;
        }
        Self {
            nodes,
            edges: edges.into_iter().collect(),
        }
    }

    /// Each node's column: 0 for a step that waits for nothing, else one more than the deepest
    /// step it waits for. A cycle (refused at creation) cannot loop: depth stops at the count.
    pub(crate) fn layers(&self) -> Vec<usize> {
        let mut depth = vec![0usize; self.nodes.len()];
        for _ in 0..self.nodes.len() {
            let mut changed = false;
            for &(from, to, _) in &self.edges {
                if depth[to] < depth[from] + 1 && depth[from] + 1 < self.nodes.len() {
                    depth[to] = depth[from] + 1;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        depth
    }

    /// The SVG, each node showing `status(step id)`.
    pub(crate) fn svg(&self, status: impl Fn(&str) -> String) -> Markup {
        let layers = self.layers();
        let mut rows = vec![0i64; self.nodes.len().max(1)];
        let mut at = Vec::with_capacity(self.nodes.len());
        for &layer in &layers {
            at.push((layer as i64, rows[layer]));
            rows[layer] += 1;
        }
        let columns = layers.iter().max().map_or(0, |m| *m as i64 + 1);
        let height_rows = rows.iter().copied().max().unwrap_or(0);
        let width = (columns * (NODE_W + GAP_X) - GAP_X + 2).max(NODE_W);
        let height = (height_rows * (NODE_H + GAP_Y) - GAP_Y + 2).max(NODE_H);
        let x = |column: i64| 1 + column * (NODE_W + GAP_X);
        let y = |row: i64| 1 + row * (NODE_H + GAP_Y);
        html! {
            svg.dag role="img" aria-label="The steps and what each waits for"
                viewBox={ "0 0 " (width) " " (height) } width=(width) height=(height) {
                defs {
                    marker #arrow viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7"
                        markerHeight="7" orient="auto-start-reverse" {
                        path d="M 0 0 L 10 5 L 0 10 z" {}
                    }
                }
                @for &(from, to, by_phase) in &self.edges {
                    @let (fc, fr) = at[from];
                    @let (tc, tr) = at[to];
                    @let (x1, y1) = (x(fc) + NODE_W, y(fr) + NODE_H / 2);
                    @let (x2, y2) = (x(tc), y(tr) + NODE_H / 2);
                    path class={ "edge" @if by_phase { " phase" } }
                        d={ "M " (x1) " " (y1) " C " (x1 + GAP_X / 2) " " (y1) ", " (x2 - GAP_X / 2) " " (y2) ", " (x2) " " (y2) }
                        marker-end="url(#arrow)" {}
                }
                @for (i, node) in self.nodes.iter().enumerate() {
                    @let (c, r) = at[i];
                    @let state = status(&node.id);
                    g id={ "node-" (node.id) } class={ "node st-" (state) } data-step=(node.id) {
                        title { (node.name) " (" (node.id) ", " (node.step_type) ")" }
                        rect x=(x(c)) y=(y(r)) width=(NODE_W) height=(NODE_H) rx="6" {}
                        text.name x=(x(c) + 8) y=(y(r) + 18) { (clip(&node.name, 24)) }
                        text.state x=(x(c) + 8) y=(y(r) + 36) { (state.replace('_', " ")) }
                    }
                }
            }
        }
    }
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut clipped: String = text.chars().take(max - 1).collect();
        clipped.push('…');
        clipped
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_step_sits_right_of_the_deepest_step_it_waits_for() {
        let graph = Graph::of(&json!({
            "steps": [
                {"id": "a", "name": "A", "type": "analysis"},
                {"id": "b", "name": "B", "type": "analysis", "dependsOn": ["a"]},
                {"id": "c", "name": "C", "type": "analysis", "dependsOn": ["a", "b"]},
                {"id": "d", "name": "D", "type": "analysis"},
            ]
        }));
        assert_eq!(graph.layers(), vec![0, 1, 2, 0]);
        assert_eq!(
            graph.edges,
            vec![(0, 1, false), (0, 2, false), (1, 2, false)]
        );
    }

    #[test]
    fn phases_order_their_steps() {
        let graph = Graph::of(&json!({
            "steps": [
                {"id": "a", "name": "A", "type": "analysis"},
                {"id": "b", "name": "B", "type": "analysis"},
                {"id": "c", "name": "C", "type": "analysis"},
                {"id": "d", "name": "D", "type": "analysis"},
            ],
            "phases": [
                {"name": "one", "mode": "parallel", "steps": ["a", "b"]},
                {"name": "two", "mode": "sequential", "steps": ["c", "d"]},
            ]
        }));
        assert_eq!(graph.layers(), vec![0, 0, 1, 2]);
        assert!(graph.edges.iter().all(|&(_, _, by_phase)| by_phase));
    }

    #[test]
    fn a_cycle_does_not_loop() {
        let graph = Graph::of(&json!({
            "steps": [
                {"id": "a", "name": "A", "type": "analysis", "dependsOn": ["b"]},
                {"id": "b", "name": "B", "type": "analysis", "dependsOn": ["a"]},
            ]
        }));
        assert!(graph.layers().iter().all(|&l| l < 2));
    }

    #[test]
    fn nodes_carry_their_status_and_escape_their_names() {
        let graph = Graph::of(&json!({
            "steps": [{"id": "a", "name": "<b>", "type": "analysis"}]
        }));
        let svg = graph.svg(|_| "running".to_owned()).into_string();
        assert!(
            svg.contains(r#"id="node-a" class="node st-running""#),
            "{svg}"
        );
        assert!(svg.contains("&lt;b&gt;"), "{svg}");
    }
}
