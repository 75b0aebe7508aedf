use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

use super::*;

/// A VM of the table: its name, labels, rules and where it is.
struct Vm {
    namespace: &'static str,
    name: &'static str,
    labels: BTreeMap<String, String>,
    placement: Placement,
    nodes: BTreeSet<String>,
}

fn vm(name: &'static str) -> Vm {
    Vm {
        namespace: "substation",
        name,
        labels: BTreeMap::new(),
        placement: Placement::default(),
        nodes: BTreeSet::new(),
    }
}

impl Vm {
    fn on(mut self, node: &str) -> Self {
        self.nodes.insert(node.into());
        self
    }
    fn labelled(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
    fn in_namespace(mut self, namespace: &'static str) -> Self {
        self.namespace = namespace;
        self
    }
    fn apart_from(mut self, rule: PlacementRule) -> Self {
        self.placement.anti_affinity.push(rule);
        self
    }
    fn with(mut self, rule: PlacementRule) -> Self {
        self.placement.affinity.push(rule);
        self
    }
    fn member(&self) -> Member<'_> {
        Member {
            namespace: self.namespace,
            name: self.name,
            labels: &self.labels,
            placement: Some(&self.placement),
            nodes: self.nodes.clone(),
        }
    }
}

fn named(names: &[&str], mode: RuleMode) -> PlacementRule {
    PlacementRule {
        vms: names.iter().map(|n| n.to_string()).collect(),
        selector: None,
        mode,
    }
}

fn labelled(key: &str, value: &str, mode: RuleMode) -> PlacementRule {
    PlacementRule {
        vms: vec![],
        selector: Some(LabelSelector {
            match_labels: Some([(key.to_owned(), value.to_owned())].into()),
            ..Default::default()
        }),
        mode,
    }
}

/// (what the table says, the VM, the others, the node asked about, the rules broken there:
/// (required, a piece of the message))
type Case = (&'static str, Vm, Vec<Vm>, &'static str, Vec<(bool, &'static str)>);

#[test]
fn the_rules_a_node_breaks() {
    use RuleMode::{Preferred, Required};
    let cases: Vec<Case> = vec![
        (
            "no rule, nothing broken",
            vm("a"),
            vec![vm("b").on("hv1")],
            "hv1",
            vec![],
        ),
        (
            "required anti-affinity by name",
            vm("a").apart_from(named(&["b"], Required)),
            vec![vm("b").on("hv1")],
            "hv1",
            vec![(true, "its antiAffinity keeps it off hypervisor hv1, where b runs")],
        ),
        (
            "anti-affinity holds on the other node",
            vm("a").apart_from(named(&["b"], Required)),
            vec![vm("b").on("hv1")],
            "hv2",
            vec![],
        ),
        (
            "anti-affinity holds both ways",
            vm("a"),
            vec![vm("b").on("hv1").apart_from(named(&["a"], Preferred))],
            "hv1",
            vec![(false, "the antiAffinity of b keeps it off hypervisor hv1")],
        ),
        (
            "a migration's target counts as a place the VM is",
            vm("a").apart_from(named(&["b"], Required)),
            vec![vm("b").on("hv1").on("hv2")],
            "hv2",
            vec![(true, "where b runs")],
        ),
        (
            "by selector, never itself",
            vm("a")
                .labelled("role", "protection")
                .apart_from(labelled("role", "protection", Required)),
            vec![
                vm("b").on("hv2").labelled("role", "protection"),
                vm("c").on("hv1"),
            ],
            "hv1",
            vec![],
        ),
        (
            "by selector, a match",
            vm("a").apart_from(labelled("role", "protection", Required)),
            vec![vm("b").on("hv2").labelled("role", "protection")],
            "hv2",
            vec![(true, "where b runs")],
        ),
        (
            "another namespace's VM is never selected",
            vm("a").apart_from(labelled("role", "protection", Required)),
            vec![
                vm("b")
                    .on("hv2")
                    .labelled("role", "protection")
                    .in_namespace("tenant-b"),
                vm("a")
                    .on("hv2")
                    .in_namespace("tenant-b")
                    .apart_from(named(&["a"], Required)),
            ],
            "hv2",
            vec![],
        ),
        (
            "affinity: with its peer",
            vm("a").with(named(&["b"], Required)),
            vec![vm("b").on("hv1")],
            "hv1",
            vec![],
        ),
        (
            "affinity: away from its peer",
            vm("a").with(named(&["b"], Preferred)),
            vec![vm("b").on("hv1")],
            "hv2",
            vec![(
                false,
                "its affinity keeps it with b, which runs on hv1, not on hv2",
            )],
        ),
        (
            "affinity with nothing placed holds anywhere",
            vm("a").with(named(&["b"], Required)),
            vec![vm("b")],
            "hv2",
            vec![],
        ),
    ];
    for (what, me, others, node, expected) in cases {
        let others: Vec<Member> = others.iter().map(Vm::member).collect();
        let broken = broken_at(&me.member(), node, &others);
        assert_eq!(broken.len(), expected.len(), "{what}: {broken:?}");
        for (b, (required, piece)) in broken.iter().zip(expected) {
            assert_eq!(b.required, required, "{what}: {b:?}");
            assert!(b.message.contains(piece), "{what}: {}", b.message);
        }
    }
}

#[test]
fn a_selector_with_an_unknown_operator_is_reported() {
    let rule = PlacementRule {
        vms: vec![],
        selector: Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "role".into(),
                operator: "Near".into(),
                values: None,
            }]),
            ..Default::default()
        }),
        mode: RuleMode::Required,
    };
    let a = vm("a").apart_from(rule);
    let message = invalid(&a.member()).expect("an unknown operator is invalid");
    assert!(message.contains("selector is invalid"), "{message}");
    assert_eq!(invalid(&vm("b").member()), None);
}
