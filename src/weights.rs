//! Weights: the tensors a network reads, by dotted `state_dict` name.

use std::collections::BTreeMap;

use crate::tensor::Tensor;

/// The weight tensors of a network, keyed by full parameter name
/// (`layer2.0.downsample.1.running_var`). Bound to a graph: every parameter the graph
/// reads is present with the shape the graph expects.
#[derive(Clone, Debug, Default)]
pub struct Weights {
    pub tensors: BTreeMap<String, Tensor>,
}

impl Weights {
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        self.tensors.insert(name.into(), tensor);
    }
}
