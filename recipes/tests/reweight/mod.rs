//! Tests of influence-based reweighting (`recipes::influence`, the `reweight` kind), the
//! acceptance tests of shared/reference/mixtures.md: the gradient identity against a finite
//! difference, synthetic upweighting (with check mode and a follow-up training comparison),
//! invariances, a harmful domain driven to its floor, abstention on identical domains.

mod common;
mod identity;
mod invariance;
mod upweight;
