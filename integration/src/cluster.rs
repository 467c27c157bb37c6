//! A local cluster of `llmtrace-node` processes: node `node-0` starts without seeds,
//! every other node `node-i` is seeded with a running node's cluster address (node 0
//! while it runs). All share one flag template (rate, extra cluster flags). Nodes can be
//! added, stopped with SIGTERM or killed; [`Cluster::wait_converged`] waits until the
//! running nodes are ready and agree on one ring made of exactly them.

use crate::node::{Node, NodeBuilder};
use crate::{wait_for, STARTUP_TIMEOUT};
use serde_json::Value;
use std::process::ExitStatus;
use std::time::Duration;

/// What every node of a cluster is started with.
#[derive(Clone)]
pub struct ClusterBuilder {
    size: usize,
    template: NodeBuilder,
}

impl ClusterBuilder {
    /// How many nodes [`ClusterBuilder::start`] starts (default 3).
    pub fn nodes(mut self, size: usize) -> Self {
        self.size = size;
        self
    }

    /// `--requests-per-second rps --burst-size burst` on every node.
    pub fn rate(mut self, rps: u64, burst: u64) -> Self {
        self.template = self.template.rate(rps, burst);
        self
    }

    /// An extra argument for every node.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.template = self.template.arg(arg);
        self
    }

    /// The flag template of every node (binary, flags), replacing what was set so far.
    pub fn template(mut self, template: NodeBuilder) -> Self {
        self.template = template;
        self
    }

    /// `--admin-token token` on every node; their admin clients send it.
    pub fn admin_token(mut self, token: &str) -> Self {
        self.template = self.template.admin_token(token);
        self
    }

    /// `--name value` on every node.
    pub fn flag(mut self, name: &str, value: impl ToString) -> Self {
        self.template = self.template.flag(name, value);
        self
    }

    /// Starts the nodes and waits (at most [`STARTUP_TIMEOUT`]) until they converge.
    pub fn start(self) -> Cluster {
        let cluster = self.spawn();
        cluster.wait_converged(STARTUP_TIMEOUT);
        cluster
    }

    /// Starts the nodes without waiting for them to converge: see
    /// [`Cluster::wait_converged`].
    pub fn spawn(self) -> Cluster {
        let mut cluster = Cluster {
            template: self.template,
            nodes: Vec::new(),
            running: Vec::new(),
            replaced: Vec::new(),
        };
        for _ in 0..self.size {
            cluster.add_node();
        }
        cluster
    }
}

/// Running (and stopped) nodes of one test cluster; every node is killed on drop.
pub struct Cluster {
    template: NodeBuilder,
    /// Node `i` is `node-i`; stopped nodes stay here so their output is printed when
    /// the test fails.
    nodes: Vec<Node>,
    /// Whether node `i` is still meant to run (not terminated / killed by the test).
    running: Vec<bool>,
    /// Earlier processes of restarted nodes ([`Cluster::restart_node`]), kept so their
    /// output is printed when the test fails.
    replaced: Vec<Node>,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            size: 3,
            template: Node::builder(),
        }
    }

    /// `size` nodes at `rps` / `burst`, converged.
    pub fn start(size: usize, rps: u64, burst: u64) -> Cluster {
        Cluster::builder().nodes(size).rate(rps, burst).start()
    }

    /// Node `i` (running or not).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// How many nodes were ever started.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The nodes still running, in index order.
    pub fn running(&self) -> Vec<&Node> {
        self.nodes
            .iter()
            .zip(&self.running)
            .filter_map(|(n, r)| r.then_some(n))
            .collect()
    }

    /// Sorted ids of the running nodes.
    pub fn running_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.running().iter().map(|n| n.node_id.clone()).collect();
        ids.sort();
        ids
    }

    /// Starts node `node-<len>` seeded from the first running node; returns its index.
    /// Does not wait for it to join: see [`Cluster::wait_converged`].
    pub fn add_node(&mut self) -> usize {
        self.add_node_with(|b| b)
    }

    /// Like [`Cluster::add_node`], with extra flags for this node only.
    pub fn add_node_with(&mut self, extra: impl FnOnce(NodeBuilder) -> NodeBuilder) -> usize {
        let i = self.nodes.len();
        let mut builder = self.template.clone().flag("node-id", format!("node-{i}"));
        if let Some(seed) = self.running().first() {
            builder = builder.flag("seeds", seed.cluster_addr());
        }
        let node = extra(builder).start();
        self.nodes.push(node);
        self.running.push(true);
        i
    }

    /// Node `i`, mutably (e.g. for [`Node::is_running`]). Stop nodes through
    /// [`Cluster::terminate`] / [`Cluster::kill`] so the cluster knows they are gone.
    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i]
    }

    /// Starts a new process for the stopped node `i` with the same node id (a restart),
    /// seeded from the first running node. Does not wait for it to join: see
    /// [`Cluster::wait_converged`]. The old process's output is kept for failure messages.
    pub fn restart_node(&mut self, i: usize) {
        assert!(!self.running[i], "node {i} still runs: stop it first");
        let mut builder = self
            .template
            .clone()
            .flag("node-id", &self.nodes[i].node_id);
        if let Some(seed) = self.running().first() {
            builder = builder.flag("seeds", seed.cluster_addr());
        }
        let old = std::mem::replace(&mut self.nodes[i], builder.start());
        self.replaced.push(old);
        self.running[i] = true;
    }

    /// SIGTERM to node `i`; returns its exit status (see [`Node::terminate`]).
    pub fn terminate(&mut self, i: usize) -> ExitStatus {
        self.running[i] = false;
        self.nodes[i].terminate()
    }

    /// SIGKILL to node `i`.
    pub fn kill(&mut self, i: usize) {
        self.running[i] = false;
        self.nodes[i].kill();
    }

    /// Polls until every running node answers `/readyz` 200 and its `/admin/cluster`
    /// says `agreed: true` with a ring of exactly the running nodes, all with the same
    /// fingerprint; returns that fingerprint. Panics with every view after `timeout`.
    pub fn wait_converged(&self, timeout: Duration) -> String {
        let ids = self.running_ids();
        let what = format!("nodes {ids:?} to agree on a ring of exactly themselves");
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(timeout, &what, || self.converged_fingerprint(&ids))
        }));
        found.unwrap_or_else(|e| {
            let views: Vec<String> = self
                .running()
                .iter()
                .map(|n| match n.try_admin_get_json("/admin/cluster") {
                    Some(v) => format!("{}: {v}", n.node_id),
                    None => format!("{}: no answer", n.node_id),
                })
                .collect();
            eprintln!("cluster views at timeout:\n{}", views.join("\n"));
            std::panic::resume_unwind(e)
        })
    }

    /// The common fingerprint when the running nodes converged on a ring of `ids`.
    fn converged_fingerprint(&self, ids: &[String]) -> Option<String> {
        let mut fingerprint: Option<String> = None;
        for node in self.running() {
            if !node.is_ready() {
                return None;
            }
            let view = node.try_admin_get_json("/admin/cluster")?;
            if !converged_view(&view, ids) {
                return None;
            }
            let fp = view["fingerprint"].as_str()?.to_string();
            match &fingerprint {
                Some(f) if *f != fp => return None,
                _ => fingerprint = Some(fp),
            }
        }
        fingerprint
    }
}

/// True when one `/admin/cluster` view is ready, agreed and has exactly `ids` (sorted)
/// in its ring.
pub fn converged_view(view: &Value, ids: &[String]) -> bool {
    let mut ring: Vec<&str> = view["ring_members"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    ring.sort_unstable();
    view["ready"] == true && view["agreed"] == true && ring == ids
}
