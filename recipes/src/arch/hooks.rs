//! What sharded training does around each decoder block ([`BlockHooks`], implemented by
//! `crate::trainer::zero`): the model calls them, and knows nothing of ranks.
//!
//! The order the model keeps, per forward: [`BlockHooks::ready`] once, then for each block `i`
//! [`BlockHooks::enter`], the block, and — when autograd does not record, or the block is
//! recomputed in backward ([`BlockHooks::recompute`]) — [`BlockHooks::leave`]. In the backward,
//! block by block in reverse: `enter` (recomputed blocks only), the block's backward, then
//! [`BlockHooks::done`], after which its parameters' gradients of this backward are complete.
//! Every rank runs the same forwards and backwards, so the hooks may run collectives.

use tch::TchError;

/// Hooks around the decoder blocks (see the module docs).
pub trait BlockHooks: Send + Sync + std::fmt::Debug {
    /// Whether blocks are recomputed in backward: their parameters are not kept from the
    /// forward to the backward.
    fn recompute(&self) -> bool;
    /// Before the model computes anything: the parameters outside the blocks are present.
    fn ready(&self) -> Result<(), TchError>;
    /// Before block `i` computes (its forward, or its recomputation): its parameters present.
    fn enter(&self, i: usize) -> Result<(), TchError>;
    /// After block `i` computed without keeping a graph: its parameters may go.
    fn leave(&self, i: usize) -> Result<(), TchError>;
    /// After block `i`'s backward: its parameters' gradients of this backward are complete.
    fn done(&self, i: usize) -> Result<(), TchError>;
}
