//! A three-node RabbitMQ cluster of the test's own, on this machine.
//!
//! [`RabbitCluster::start`] starts three [`RabbitNode`]s (own names, free
//! ports, own data, logs, empty plugin list and `rabbitmq.conf`; they share
//! the Erlang cookie because the packaged wrappers run as user rabbitmq
//! with `HOME=/var/lib/rabbitmq`, see `rabbit_node.rs`), then joins the
//! second and third to the first (`stop_app`, `join_cluster`, `start_app`).
//! Dropping it stops every node and deletes their directories.
//! `scripts/rabbit-cluster.sh` does the same for people, on fixed ports.
//!
//! It does not touch the shared broker.

use serde_json::Value;

use super::rabbit_node::RabbitNode;

pub struct RabbitCluster {
    pub nodes: Vec<RabbitNode>,
}

impl RabbitCluster {
    /// Starts three nodes (in parallel) and clusters them. Blocking.
    pub fn start(tag: &str) -> RabbitCluster {
        let starting: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|member| {
                let tag = format!("{tag}-{member}");
                std::thread::spawn(move || RabbitNode::start(&tag))
            })
            .collect();
        let nodes: Vec<RabbitNode> = starting
            .into_iter()
            .map(|t| t.join().expect("a cluster node failed to start"))
            .collect();
        for node in &nodes[1..] {
            node.ctl(&["stop_app"]);
            node.ctl(&["join_cluster", &nodes[0].name]);
            node.start_app();
        }
        let cluster = RabbitCluster { nodes };
        let running = cluster.running_nodes();
        assert_eq!(running.len(), 3, "cluster did not form: {running:?}");
        cluster
    }

    /// Every node's `amqp://` URL, in node order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RabbitNode::url).collect()
    }

    /// The running members, as the first node that answers sees them.
    pub fn running_nodes(&self) -> Vec<String> {
        let status = self.json(&["cluster_status"]);
        status["running_nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The index of the node that leads quorum queue `queue`.
    pub fn leader_of(&self, queue: &str) -> usize {
        let info = self.queue_info(queue);
        let leader = info["leader"].as_str().unwrap_or_default().to_owned();
        self.nodes
            .iter()
            .position(|n| n.name == leader)
            .unwrap_or_else(|| panic!("no leader for {queue}: {info}"))
    }

    /// `list_queues name type leader members messages` for `queue`.
    pub fn queue_info(&self, queue: &str) -> Value {
        let queues = self.json(&[
            "list_queues",
            "name",
            "type",
            "leader",
            "members",
            "messages",
        ]);
        queues
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["name"] == queue).cloned())
            .unwrap_or_else(|| panic!("queue {queue} not listed: {queues}"))
    }

    /// `rabbitmqctl <args> --formatter json` on the first node that
    /// answers (one may have been killed).
    fn json(&self, args: &[&str]) -> Value {
        let mut last = String::new();
        for node in &self.nodes {
            let mut full = args.to_vec();
            full.extend(["-q", "--formatter", "json"]);
            let output = node.try_ctl(&full);
            if output.status.success() {
                return serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
                    panic!("{e}: {}", String::from_utf8_lossy(&output.stdout))
                });
            }
            last = String::from_utf8_lossy(&output.stderr).into_owned();
        }
        panic!("no cluster node answered {args:?}: {last}");
    }
}
