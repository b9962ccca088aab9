//! The scheduler (kube-scheduler's role): finds a node for every pod that has
//! none and binds it there through the API.
//!
//! - [`queue`]: pods waiting for a node (active, back-off, unschedulable).
//! - [`cache`]: nodes with running totals of what their pods use; assume-then-bind.
//! - [`filters`] and [`scores`]: the rules, one small unit each, listed in [`Profile`].
//! - [`algorithm`]: one decision: filter (a share of the nodes), score, pick.
//! - [`scheduler`]: the loop, fed by the shared informers; binding, events, conditions.
//! - [`pod_info`], [`affinity`], [`resources`]: what a pod asks for, read once per attempt.

pub mod affinity;
pub mod algorithm;
pub mod cache;
pub mod filters;
pub mod pod_info;
pub mod queue;
pub mod resources;
pub mod scheduler;
pub mod scores;

pub use scheduler::run;

use filters::Filter;
use scores::Score;

/// The rules the scheduler applies, in order (upstream's scheduling profile).
pub struct Profile {
    /// Every filter must pass; the first that fails gives the node's reasons.
    pub filters: Vec<Box<dyn Filter>>,
    /// Summed with their weights over the feasible nodes.
    pub scores: Vec<Box<dyn Score>>,
    /// Feasible nodes to find before scoring, as a percentage of all nodes;
    /// 0 is upstream's adaptive default.
    pub percentage_of_nodes_to_score: u32,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            filters: vec![
                Box::new(filters::NodeUnschedulable),
                // Before NodeReady, so a node the lifecycle controller has tainted
                // not-ready reads as upstream words it.
                Box::new(filters::TaintToleration),
                Box::new(filters::NodeReady),
                Box::new(filters::NodeAffinity),
                Box::new(filters::NodePorts),
                Box::new(filters::NodeResourcesFit),
            ],
            scores: vec![
                Box::new(scores::TaintTolerationPreference),
                Box::new(scores::NodeAffinityPreference),
                Box::new(scores::LeastAllocated),
                Box::new(scores::BalancedAllocation),
                Box::new(scores::SelectorSpread),
            ],
            percentage_of_nodes_to_score: 0,
        }
    }
}
